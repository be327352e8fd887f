"""torchxrayvision weights as Model C: found, loaded weights-only, fed as they expect, checked for overlap."""

import os
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import skimage.io
import torch
import torchxrayvision as xrv
import yaml

from lowmed import compare_runs, evaluate, finetune, prepare, train
from lowmed.cli import main
from lowmed.config import TrainConfig
from lowmed.data.loading import decode_square
from lowmed.errors import Interrupted, LowmedError
from lowmed.io import sha256_file
from lowmed.models.forward import Normalizer, model_input
from lowmed.models.registry import build_model, get_model_spec
from lowmed.models.weights import load_weights, weight_sources, weights_preprocessing
from lowmed.models.xrv import preprocessing as xrv_preprocessing
from lowmed.preprocessing import Preprocessing
from lowmed.training.train import resume_run
from tests.conftest import FAST
from tests.test_train import interrupted_at_epoch

ALL = "densenet121-res224-all"
QUICK = {**FAST, "epochs": 1, "fine_tune_epochs": 1, "fine_tune_layers": 4, "batch_size": 8}


def _file_name(name: str) -> str:
    return os.path.basename(xrv.models.model_urls[name]["weights_url"])


@pytest.fixture(scope="module")
def xrv_cache(tmp_path_factory):
    """torchxrayvision's DenseNet, randomly initialised, saved as its weight files are: the whole model object."""
    folder = tmp_path_factory.mktemp("xrv-cache")
    torch.manual_seed(0)
    model = xrv.models.DenseNet(weights=None)
    for name in (ALL, "densenet121-res224-nih"):
        torch.save(model, folder / _file_name(name))
    return folder


def _train_xrv(data: Path, weights_dir: Path, out: Path) -> list[str]:
    """``lowmed train`` with the ``all`` weights from ``weights_dir``."""
    return [
        "train",
        str(data),
        "--model",
        "densenet121",
        "--weights",
        f"xrv:{ALL}",
        "--weights-dir",
        str(weights_dir),
        "--out",
        str(out),
    ]


def _xrv_model(cache: Path) -> torch.nn.Module:
    with torch.serialization.safe_globals([xrv.models.DenseNet]):  # only to read the test's own file back
        return torch.load(cache / _file_name(ALL), weights_only=False).eval()


def test_train_evaluate_and_finetune_from_xrv_weights(separable, xrv_cache, tmp_path):
    config = TrainConfig(
        data=str(separable), model="densenet121", weights=f"xrv:{ALL}", weights_dir=str(xrv_cache), **QUICK
    )
    summary = train(TrainConfig(**{**config.to_dict(), "out": str(tmp_path / "c")}))
    report = summary.weights
    assert report.source == "xrv" and report.name == f"xrv:{ALL}" and summary.arm == "C medical"
    assert report.matched == report.backbone_tensors and not report.missing  # every backbone tensor matched
    assert {"classifier.weight", "classifier.bias"} <= set(report.unexpected)  # the 18-finding classifier dropped
    assert report.adapted == ["features.conv0.weight"] and report.sha256 == sha256_file(xrv_cache / _file_name(ALL))
    contract = {"input_size": 32, "channels": 1, "mean": [0.5], "std": [0.5 / 1024]}
    assert summary.preprocessing == contract
    resolved = TrainConfig.from_yaml(tmp_path / "c" / "config.yaml")
    assert (resolved.input_channels, resolved.input_norm) == (1, "xrv")
    assert torch.load(tmp_path / "c" / "best.pt", weights_only=True)["preprocessing"] == contract
    assert evaluate(tmp_path / "c", bootstrap=0).n == 20
    again = finetune(tmp_path / "c", separable, out=str(tmp_path / "c2"), **QUICK)
    assert again.preprocessing == contract and again.weights.source == "run"


def test_lowmed_input_and_features_agree_with_torchxrayvision(xrv_cache, tmp_path):
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 96)[None, :] * np.linspace(0.3, 1, 80)[:, None]
    image = np.clip(ramp + rng.normal(0, 8, ramp.shape), 0, 255).astype(np.uint8)  # not square, not symmetric
    path = tmp_path / "cxr.png"
    skimage.io.imsave(path, image)
    theirs = xrv.datasets.normalize(skimage.io.imread(path), 255)[None, ...]
    theirs = xrv.datasets.XRayResizer(64)(xrv.datasets.XRayCenterCrop()(theirs))[0]
    contract = xrv_preprocessing(ALL)
    ours = model_input(decode_square(path, 80)[None], Normalizer(contract, torch.device("cpu")), torch.device("cpu"))
    assert ours.shape == (1, 3, 80, 80) and torch.equal(ours[0, 0], ours[0, 2])  # grey, in each channel
    assert -1024 <= ours.min() and ours.max() <= 1024 and -1024 <= theirs.min() and theirs.max() <= 1024
    # lowmed keeps the whole field of view and resizes; torchxrayvision crops the centre: compare the same square
    crop = torch.nn.functional.interpolate(ours[:, :1, :, 8:72], size=(64, 64), mode="bilinear", antialias=True)[0, 0]
    assert np.corrcoef(crop.numpy().ravel(), theirs.ravel())[0, 1] > 0.99  # same scale and orientation
    assert abs(float(crop.mean()) - float(theirs.mean())) < 20

    spec = get_model_spec("densenet121")
    backbone = build_model(spec, 2).backbone.eval()
    load_weights(backbone, spec, f"xrv:{ALL}", weights_dir=str(xrv_cache))
    x = torch.randn(2, 1, 64, 64) * 400
    with torch.no_grad():
        expected = _xrv_model(xrv_cache).features2(x)
        assert torch.allclose(backbone(x.expand(-1, 3, -1, -1)), expected, rtol=1e-4, atol=1e-4)


def test_a_tampered_weight_file_is_refused_without_running_it(separable, tmp_path, capsys):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    cache = tmp_path / "cache"
    cache.mkdir()
    torch.save(Payload(), cache / _file_name(ALL))
    with pytest.raises(SystemExit) as exit_info:
        main(_train_xrv(separable, cache, tmp_path / "run"))
    output = capsys.readouterr().err
    assert exit_info.value.code == 2 and "refused: not a torchxrayvision weight file" in output
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_offline_without_the_file_names_file_url_and_folder(separable, tmp_path, capsys, monkeypatch):
    def no_network(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(SystemExit) as exit_info:
        main(_train_xrv(separable, tmp_path / "empty", tmp_path / "run"))
    output = " ".join(capsys.readouterr().err.split())
    url = xrv.models.model_urls[ALL]["weights_url"]
    assert exit_info.value.code == 2
    assert _file_name(ALL) in output and url in output and str(tmp_path / "empty") in output
    assert not (tmp_path / "run").exists() and not list((tmp_path / "empty").glob("*"))


@pytest.mark.parametrize(
    "weights, model, message",
    [
        ("xrv:densenet121-res224-foo", "densenet121", "not a torchxrayvision weight"),
        (f"xrv:{ALL}", "resnet50", "these are densenet121 weights; use --model densenet121"),
    ],
)
def test_unknown_or_mismatched_xrv_names_are_refused(separable, weights, model, message, tmp_path):
    with pytest.raises(LowmedError, match=message):
        train(TrainConfig(data=str(separable), model=model, weights=weights, out=str(tmp_path / "r")))


def test_each_xrv_weight_declares_its_input_size(xrv_cache):
    assert weights_preprocessing(f"xrv:{ALL}", get_model_spec("densenet121")).input_size == 224
    assert weights_preprocessing("xrv:resnet50-res512-all", get_model_spec("resnet50")).input_size == 512


def test_pretraining_overlap_is_warned_recorded_and_marked(nih, xrv_cache, tmp_path, capsys):
    prepared = prepare(nih, tmp_path / "nih")
    options = {**QUICK, "data": str(prepared.root), "model": "densenet121", "weights_dir": str(xrv_cache)}
    flagged = train(TrainConfig(**options, weights="xrv:densenet121-res224-nih", out=str(tmp_path / "runs" / "c")))
    warning = " ".join(capsys.readouterr().err.split())
    assert "was pretrained on nih, which includes nih, the target's source" in warning
    assert flagged.pretraining_overlap == {"status": "possible", "weights_trained_on": ["nih"], "target": "nih"}
    named = train(
        TrainConfig(**options, weights="xrv:densenet121-res224-nih", dataset_name="kermany", arm="C-named"),
        runs_root=tmp_path / "other",
    )
    assert named.pretraining_overlap["status"] == "none known"
    comparison = compare_runs([tmp_path / "runs"], bootstrap=0, resamples=10)
    assert "Pretraining overlap possible: arm C medical (xrv:densenet121-res224-nih" in comparison.overlap
    assert comparison.overlap in (tmp_path / "runs" / "compare.md").read_text()


@pytest.mark.parametrize(
    "option, message",
    [
        (["--input-channels", "2"], "--input-channels 2: expected 1 or 3"),
        (["--input-norm", "bright"], "--input-norm 'bright': expected imagenet, xrv, unit, MEAN,STD"),
        (["--input-norm", "0.5,0.2,0.1"], "3 numbers for 3 channel(s)"),
        (["--input-norm", "0.5,0"], "a standard deviation must be positive"),
    ],
)
def test_bad_input_contract_options_are_one_line(option, message, separable, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(separable), *option, "--out", str(tmp_path / "r")])
    output = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in output and len(output.strip().splitlines()) == 1


def test_a_foreign_input_contract_is_kept_on_resume_and_finetune(separable, tmp_path, monkeypatch):
    options = {**FAST, "data": str(separable), "epochs": 3, "input_channels": 1, "input_norm": "0.5,0.25"}
    contract = {"input_size": 32, "channels": 1, "mean": [0.5], "std": [0.25]}
    with interrupted_at_epoch(monkeypatch, 2), pytest.raises(Interrupted):
        train(TrainConfig(**options, out=str(tmp_path / "cut")))
    resumed = resume_run(tmp_path / "cut")
    assert resumed.resumed and resumed.preprocessing == contract
    assert yaml.safe_load((tmp_path / "cut" / "config.yaml").read_text())["input_norm"] == "0.5,0.25"
    tuned = finetune(tmp_path / "cut", separable, out=str(tmp_path / "ft"), **{**FAST, "epochs": 1})
    assert tuned.preprocessing == contract
    assert Preprocessing.from_dict(contract).norm == "0.5,0.25"


def test_models_lists_the_weight_sources_and_their_files(xrv_cache, capsys):
    rows = {row["weights"] + " " + row["model"]: row for row in weight_sources(str(xrv_cache))}
    assert rows[f"xrv:{ALL} densenet121"]["input"] == "224 px, 1 channel (grey), xrv"
    assert rows["xrv:resnet50-res512-all resnet50"]["input"] == "512 px, 1 channel (grey), xrv"
    assert rows["imagenet densenet121"]["input"] == "224 px, 3 channels, imagenet"
    assert rows[f"xrv:{ALL} densenet121"]["file"].endswith("(present)")  # all and nih are in the cache
    assert rows["xrv:densenet121-res224-rsna densenet121"]["file"].endswith("(missing)")
    assert "nih" in rows["xrv:densenet121-res224-rsna densenet121"]["trained_on"]
    with pytest.raises(SystemExit) as exit_info:
        main(["models", "--weights", "--weights-dir", str(xrv_cache)])
    assert exit_info.value.code == 0 and "weight sources" in capsys.readouterr().out
