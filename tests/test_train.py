"""Training: learning really happens, phases freeze what they should, resume replays exactly, AMP steps once."""

import json
import math
from contextlib import contextmanager

import pandas as pd
import pytest
import torch
import yaml
from torch.optim.optimizer import register_optimizer_step_post_hook

from lowmed import device as device_module
from lowmed import evaluate, prepare
from lowmed.config import TrainConfig
from lowmed.device import cpuinfo_has_bf16
from lowmed.errors import Interrupted, LowmedError, RunFailed
from lowmed.models import forward as forward_module
from lowmed.models.simple_cnn import SimpleCNN
from lowmed.training import loop
from lowmed.training.train import finetune, resume_run, train, train_model
from tests.conftest import FAST
from tests.factory import make_kermany


def history(run_dir):
    return pd.read_csv(run_dir / "history.csv")


@contextmanager
def interrupted_at_epoch(monkeypatch, epoch: int):
    """Ctrl-C while the given epoch validates (every training path validates through validation_metrics)."""
    real, calls = loop.validation_metrics, []

    def stop(*args, **kwargs):
        calls.append(1)
        if len(calls) == epoch:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(loop, "validation_metrics", stop)
        yield


def test_simplecnn_learns_the_separable_task(separable, tmp_path):
    summary = train(TrainConfig(data=str(separable), epochs=8, out=str(tmp_path / "run"), **FAST))
    assert summary["status"] == "completed"
    assert summary["best"]["metrics"]["val_accuracy"] >= 0.95
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} == {"config.yaml", "history.csv", "best.pt", "last.pt", "train.json"}
    rows = history(run)
    assert list(rows.columns[:5]) == ["phase", "epoch", "phase_epoch", "lr", "train_loss"]
    assert rows["train_loss"].iloc[-1] < rows["train_loss"].iloc[0]
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["classes"] == ["NORMAL", "PNEUMONIA"] and best["preprocessing"]["input_size"] == 32


def test_resume_after_interruption_equals_uninterrupted_run(separable, tmp_path, monkeypatch):
    config = TrainConfig(data=str(separable), epochs=5, **FAST)
    train(TrainConfig(**{**config.to_dict(), "out": str(tmp_path / "whole")}))

    with interrupted_at_epoch(monkeypatch, 3), pytest.raises(Interrupted, match="lowmed train --resume"):
        train(TrainConfig(**{**config.to_dict(), "out": str(tmp_path / "cut")}))
    assert len(history(tmp_path / "cut")) == 2
    summary = resume_run(tmp_path / "cut")
    assert summary["resumed"] is True and summary["epochs_run"] == 5
    whole, resumed = history(tmp_path / "whole"), history(tmp_path / "cut")
    columns = ["epoch", "phase", "lr", "train_loss", "val_loss", "val_accuracy"]
    pd.testing.assert_frame_equal(whole[columns], resumed[columns], rtol=1e-5)


def test_existing_run_dir_is_not_overwritten(separable, tmp_path):
    config = TrainConfig(data=str(separable), epochs=1, out=str(tmp_path / "run"), **FAST)
    train(config)
    with pytest.raises(LowmedError, match="exists; continue it with --resume"):
        train(config)
    assert train(config, overwrite=True)["status"] == "completed"


def test_frozen_phase_leaves_the_backbone_untouched(separable, tmp_path):
    train(TrainConfig(data=str(separable), epochs=2, out=str(tmp_path / "source"), **FAST))
    summary = finetune(tmp_path / "source", separable, epochs=2, fine_tune_epochs=0, out=str(tmp_path / "c"), **FAST)
    assert summary["phases"] == ["frozen"] and summary["weight_source"] == "run"
    assert summary["weights"]["matched"] == summary["weights"]["backbone_tensors"] and not summary["weights"]["missing"]
    source = torch.load(tmp_path / "source" / "best.pt", weights_only=True)["model"]
    tuned = torch.load(tmp_path / "c" / "last.pt", weights_only=True)["model"]
    for key, value in source.items():
        if key.startswith("backbone."):
            assert torch.equal(value, tuned[key]), key  # weights and batch-norm statistics alike
    assert any(not torch.equal(source[k], tuned[k]) for k in source if k.startswith("head."))


def test_freeze_bn_keeps_the_pretrained_statistics_while_the_weights_fine_tune(separable, tmp_path):
    train(TrainConfig(data=str(separable), epochs=2, out=str(tmp_path / "source"), **FAST))
    source = torch.load(tmp_path / "source" / "best.pt", weights_only=True)["model"]
    options = {"epochs": 1, "fine_tune_epochs": 2, "fine_tune_layers": 1000, **FAST}
    for frozen in (True, False):
        out = tmp_path / f"freeze-{frozen}"
        finetune(tmp_path / "source", separable, out=str(out), freeze_bn=frozen, **options)
        tuned = torch.load(out / "last.pt", weights_only=True)["model"]
        statistics = [k for k in source if k.startswith("backbone.") and k.endswith(("running_mean", "running_var"))]
        kept = [torch.equal(source[k], tuned[k]) for k in statistics]
        assert all(kept) if frozen else not any(kept)  # the statistics stay, or follow the small batches
        weights = [k for k in source if k.startswith("backbone.") and k.endswith(".weight")]
        assert any(not torch.equal(source[k], tuned[k]) for k in weights)  # the weights fine-tune either way


def test_finetune_equals_train_with_run_dir_weights(separable, tmp_path):
    train(TrainConfig(data=str(separable), epochs=2, out=str(tmp_path / "source"), **FAST))
    options = {"epochs": 2, "fine_tune_epochs": 2, "fine_tune_layers": 4, **FAST}
    finetune(tmp_path / "source", separable, out=str(tmp_path / "a"), **options)
    train(
        TrainConfig(data=str(separable), weights=str(tmp_path / "source"), out=str(tmp_path / "b"), **options),
    )
    a, b = history(tmp_path / "a"), history(tmp_path / "b")
    assert list(a["phase"]) == ["frozen", "frozen", "finetune", "finetune"]
    pd.testing.assert_frame_equal(a[["train_loss", "val_loss"]], b[["train_loss", "val_loss"]], rtol=1e-6)


def test_cpu_autocast_takes_one_optimizer_step_per_batch(separable, tmp_path):
    steps = []
    handle = register_optimizer_step_post_hook(lambda *args: steps.append(1))
    try:
        summary = train(TrainConfig(data=str(separable), epochs=2, amp=True, out=str(tmp_path / "run"), **FAST))
    finally:
        handle.remove()
    train_images = sum(summary["dataset"]["train_counts"].values())
    assert summary["precision"] == "bfloat16"
    assert len(steps) == 2 * (train_images // FAST["batch_size"])  # drop_last: full batches only


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("bf16", [True, False], ids=["bf16", "fp16-gradscaler"])
def test_cuda_amp_path(separable, tmp_path, monkeypatch, bf16):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    steps = []
    handle = register_optimizer_step_post_hook(lambda *args: steps.append(1))
    try:
        summary = train(TrainConfig(data=str(separable), epochs=2, device="cuda", out=str(tmp_path / "run"), **FAST))
    finally:
        handle.remove()
    assert summary["amp"] is True and summary["precision"] == ("bfloat16" if bf16 else "float16")
    assert summary["device"].startswith("cuda") and math.isfinite(summary["best"]["metrics"]["val_loss"])
    assert len(steps) <= 2 * (sum(summary["dataset"]["train_counts"].values()) // FAST["batch_size"])


def test_nan_loss_stops_the_run_and_marks_it_failed(separable, tmp_path, monkeypatch):
    monkeypatch.setattr(loop.Criterion, "__call__", lambda self, *args: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(RunFailed, match=r"the loss became nan at epoch 1, batch 1"):
        train(TrainConfig(data=str(separable), epochs=2, out=str(tmp_path / "run"), **FAST))
    summary = json.loads((tmp_path / "run" / "train.json").read_text())
    assert summary["status"] == "failed" and "loss became nan" in summary["error"]


def test_seed_project_python_api(separable, tmp_path):
    results = train_model(
        model_name="simplecnn",
        dataset_root=separable,
        epochs=1,
        learning_rate=1e-3,
        image_size=32,
        batch_size=16,
        checkpoint_dir=tmp_path / "checkpoints",
    )
    assert results["model_path"].endswith("best.pt") and (tmp_path / "checkpoints").is_dir()
    assert results["run_dir"].startswith(str(tmp_path / "checkpoints"))
    # the usual dict idioms, as the seed project's dicts had them
    assert "model_path" in results and "best" in results and "no such key" not in results
    assert set(results.keys()) == set(dict(results)) == set(iter(results)) and len(results) == len(dict(results))
    assert dict(results.items())["seed"] == results.get("seed") == 0 and results.get("no such key", 7) == 7
    with pytest.raises(KeyError):
        results["no such key"]
    with pytest.raises(TypeError):
        results["seed"] = 1  # read-only


def test_inception_auxiliary_head_trains_at_299_px(tmp_path):
    src = make_kermany(tmp_path / "src", {"train": {"NORMAL": 4, "PNEUMONIA": 4}})
    data = prepare(src, tmp_path / "p", min_val_per_class=1).root
    with pytest.raises(LowmedError, match="--image-size 224: inception_v3 needs at least 299 px"):
        train(TrainConfig(data=str(data), model="inception_v3", weights="none", image_size=224))
    summary = train(
        TrainConfig(
            data=str(data), model="inception_v3", weights="none", epochs=1, batch_size=3, out=str(tmp_path / "run")
        ),
    )
    assert summary["status"] == "completed" and summary["preprocessing"]["input_size"] == 299
    tuned = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["model"]
    assert tuned["aux_head.weight"].shape == (2, 768)


def test_multilabel_training_masks_uncertain_labels(chexpert, tmp_path):
    data = prepare(chexpert, tmp_path / "p", uncertain="ignore").root
    summary = train(TrainConfig(data=str(data), epochs=1, out=str(tmp_path / "run"), **FAST))
    assert summary["dataset"]["task"] == "multilabel" and summary["status"] == "completed"


def test_config_yaml_repeats_the_run(separable, tmp_path):
    train(TrainConfig(data=str(separable), epochs=2, out=str(tmp_path / "a"), **FAST))
    saved = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert saved["image_size"] == 32 and saved["weights"] == "none" and saved["amp"] is False
    again = TrainConfig.from_yaml(tmp_path / "a" / "config.yaml")
    train(TrainConfig(**{**again.to_dict(), "out": str(tmp_path / "b")}))
    pd.testing.assert_frame_equal(
        history(tmp_path / "a").drop(columns=["seconds", "images_per_s"]),
        history(tmp_path / "b").drop(columns=["seconds", "images_per_s"]),
    )


def test_frozen_phase_runs_the_backbone_once_per_view_not_per_epoch(separable, tmp_path, monkeypatch):
    train(TrainConfig(data=str(separable), epochs=1, out=str(tmp_path / "source"), **FAST))
    calls = []
    real_forward = SimpleCNN.forward
    monkeypatch.setattr(SimpleCNN, "forward", lambda self, x: calls.append(len(x)) or real_forward(self, x))
    summary = finetune(
        tmp_path / "source",
        separable,
        epochs=6,
        fine_tune_epochs=0,
        cached_views=2,
        out=str(tmp_path / "cached"),
        **FAST,
    )
    train_images = sum(summary["dataset"]["train_counts"].values())
    val_images = sum(summary["dataset"]["val_counts"].values())
    assert summary["epochs_run"] == 6
    # two views of the train set, the val set once, and two probe images (the memory estimate's, the cache's)
    assert sum(calls) == 2 * train_images + val_images + 2
    calls.clear()
    finetune(
        tmp_path / "source",
        separable,
        epochs=6,
        fine_tune_epochs=0,
        cached_views=0,
        out=str(tmp_path / "uncached"),
        **FAST,
    )
    assert sum(calls) >= 6 * (train_images // FAST["batch_size"] * FAST["batch_size"] + val_images)


@pytest.mark.parametrize("stop_at", [3, 6], ids=["frozen-phase", "fine-tuning"])
def test_resume_inside_a_cached_phase(separable, tmp_path, monkeypatch, stop_at):
    """Resumed in fine-tuning, the run rebuilds from the images the cache the whole run carried over from its
    frozen phase: the histories must agree."""
    train(TrainConfig(data=str(separable), epochs=1, out=str(tmp_path / "source"), **FAST))
    options = {"epochs": 4, "fine_tune_epochs": 3, "fine_tune_layers": 6, **FAST}
    finetune(tmp_path / "source", separable, out=str(tmp_path / "whole"), **options)
    with interrupted_at_epoch(monkeypatch, stop_at), pytest.raises(Interrupted):
        finetune(tmp_path / "source", separable, out=str(tmp_path / "cut"), **options)
    resume_run(tmp_path / "cut")
    columns = ["phase", "epoch", "train_loss", "val_loss"]
    pd.testing.assert_frame_equal(history(tmp_path / "whole")[columns], history(tmp_path / "cut")[columns], rtol=1e-5)


def test_compile_trains_and_saves_plain_names(separable, tmp_path, monkeypatch):
    """torch.compile wraps the module (whose state dict then says ``_orig_mod.``); the checkpoints keep the plain
    names. The eager backend wraps alike without generating C++ code, which takes most of a minute on a CPU."""
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda module, **options: compile_(module, backend="eager", **options))
    summary = train(TrainConfig(data=str(separable), epochs=1, compile=True, out=str(tmp_path / "run"), **FAST))
    assert summary["status"] == "completed"
    saved = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["model"]
    assert not any(key.startswith("_orig_mod") for key in saved)


@pytest.mark.parametrize(
    "cpuinfo, native",
    [
        ("flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n", True),
        ("flags\t\t: fpu sse2 avx2 amx_bf16 amx_tile\n", True),
        ("Features\t: fp asimd bf16 i8mm\n", True),
        ("flags\t\t: fpu sse2 avx2 avx512f avx512bw\n", False),
        ("processor\t: 0\n", False),
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo, native):
    assert cpuinfo_has_bf16(cpuinfo) is native


@pytest.mark.parametrize("native", [True, False], ids=["bf16-cpu", "fp32-cpu"])
def test_cpu_precision_is_fp32_unless_asked_and_evaluation_follows_the_run(
    separable, tmp_path, monkeypatch, capsys, native
):
    """The CPU default is fp32; --amp trains in bf16 (with a warning where it is emulated), and evaluation follows
    the run where the CPU has it natively. Images go channels-last on a CPU in either precision."""
    monkeypatch.setattr(device_module, "cpu_supports_bf16", lambda: native)
    layouts = []
    real_model_input = forward_module.model_input
    monkeypatch.setattr(
        forward_module,
        "model_input",
        lambda *args, **kwargs: layouts.append(kwargs.get("channels_last")) or real_model_input(*args, **kwargs),
    )
    fp32 = train(TrainConfig(data=str(separable), epochs=1, out=str(tmp_path / "fp32"), **FAST))
    assert fp32.amp is False and fp32.precision == "off"
    assert evaluate(tmp_path / "fp32", bootstrap=0).precision == "off" and set(layouts) == {True}
    layouts.clear()
    capsys.readouterr()
    bf16 = train(TrainConfig(data=str(separable), epochs=1, amp=True, out=str(tmp_path / "bf16"), **FAST))
    assert bf16.precision == "bfloat16" and set(layouts) == {True}
    assert ("emulated, slower than fp32" in capsys.readouterr().err) is not native
    report = evaluate(tmp_path / "bf16", bootstrap=0)
    assert report.precision == ("bfloat16" if native else "off")


@pytest.mark.parametrize("monitor, epochs_run, best_epoch", [("val_loss", 2, 1), ("val_auroc", 4, 4)])
def test_early_stopping_follows_the_monitored_value(monitor, epochs_run, best_epoch, separable, tmp_path, monkeypatch):
    """A val loss that rises while the AUROC climbs (miscalibration early in training) stops a run monitored by
    val_loss, but not one monitored by val_auroc, which keeps its best AUROC epoch."""
    scripted = iter([(0.69, 0.50), (0.80, 0.60), (0.90, 0.70), (1.00, 0.80)])

    def validation(*args, **kwargs):
        loss, auroc = next(scripted)
        return {"val_loss": loss, "val_accuracy": 0.5, "val_auroc": auroc}

    monkeypatch.setattr(loop, "evaluate_split", validation)
    config = TrainConfig(
        data=str(separable), epochs=4, patience=1, monitor=monitor, out=str(tmp_path / monitor), **FAST
    )
    summary = train(config)
    assert summary.epochs_run == epochs_run and summary.best["epoch"] == best_epoch
