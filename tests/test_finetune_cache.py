"""Fine-tuning on cached activations: the blocks compose to the backbone, the frozen layers run once per view, the
cached path trains exactly as the whole network does, and it steps aside when the activations do not fit."""

import json

import pandas as pd
import pytest
import torch
from torch import nn

from lowmed.config import TrainConfig
from lowmed.models.blocks import backbone_blocks
from lowmed.models.registry import MODELS, build_model, get_model_spec
from lowmed.training import features
from lowmed.training.train import finetune, train
from tests.conftest import FAST

FINETUNE = {"epochs": 2, "fine_tune_epochs": 3, "fine_tune_layers": 6, **FAST}


CHAINS = [*(name for name in MODELS if name != "inception_v3"), "timm:efficientnet_lite0", "timm:resnet18"]


@pytest.mark.parametrize("name", CHAINS)
def test_stages_compose_to_the_backbone(name):
    torch.manual_seed(0)
    backbone = build_model(get_model_spec(name), 2).backbone.eval()
    x = torch.randn(2, 3, 64, 64)
    blocks = backbone_blocks(backbone)
    assert blocks is not None and len({block_name for block_name, _ in blocks}) == len(blocks)
    with torch.no_grad():
        chained = x
        for _, module in blocks:
            chained = module(chained)
        assert torch.allclose(chained, backbone(x), atol=1e-5)
    block_parameters = {id(p) for _, module in blocks for p in module.parameters()}
    assert block_parameters == {id(p) for p in backbone.parameters()}  # every weight lies in one of them


def test_inception_is_not_a_chain_of_blocks():
    assert backbone_blocks(build_model(get_model_spec("inception_v3"), 2).backbone) is None


@pytest.fixture(scope="module")
def source(separable, tmp_path_factory):
    run = tmp_path_factory.mktemp("source") / "run"
    train(TrainConfig(data=str(separable), epochs=1, out=str(run), **FAST))
    return run


def first_conv_images(monkeypatch) -> list[int]:
    """Images through the network's first convolution (3 input channels), counted per call."""
    calls = []
    real = nn.Conv2d.forward

    def counted(self, x):
        if self.in_channels == 3:
            calls.append(len(x))
        return real(self, x)

    monkeypatch.setattr(nn.Conv2d, "forward", counted)
    return calls


def test_finetune_runs_the_frozen_layers_once_per_view(separable, source, tmp_path, monkeypatch):
    calls = first_conv_images(monkeypatch)
    summary = finetune(source, separable, cached_views=2, out=str(tmp_path / "cached"), **FINETUNE)
    train_images = sum(summary["dataset"]["train_counts"].values())
    val_images = sum(summary["dataset"]["val_counts"].values())
    # for both phases together: two views of the train set, the val set once, two probe images (the memory
    # estimate's and the cache's)
    once = 2 * train_images + val_images + 2
    assert sum(calls) == once
    caches = summary["caches"]
    block_names = [name for name, _ in backbone_blocks(build_model(get_model_spec("simplecnn"), 2).backbone)]
    assert caches["finetune"]["boundary"] in block_names[:-1] and caches["finetune"]["views"] == 2
    assert caches["frozen"]["boundary"] == "backbone" and caches["frozen"]["dtype"] == "float32"
    assert caches["frozen"]["computed_from"] == caches["finetune"]["boundary"]
    assert json.loads((tmp_path / "cached" / "train.json").read_text())["caches"] == caches

    calls.clear()
    finetune(source, separable, cache_finetune=False, out=str(tmp_path / "whole"), **FINETUNE)
    whole_batches = train_images // FAST["batch_size"] * FAST["batch_size"]
    assert sum(calls) - once >= FINETUNE["fine_tune_epochs"] * (whole_batches + val_images)


def test_cached_finetune_trains_as_the_whole_network_does(separable, source, tmp_path):
    """Without augmentation every view is the image itself: both paths must see the same numbers."""
    options = {**FINETUNE, "augment_strength": 0.0}
    finetune(source, separable, out=str(tmp_path / "cached"), **options)
    finetune(source, separable, cache_finetune=False, out=str(tmp_path / "whole"), **options)
    columns = ["phase", "epoch", "train_loss", "val_loss", "val_auroc"]
    cached, whole = (pd.read_csv(tmp_path / name / "history.csv")[columns] for name in ("cached", "whole"))
    assert (cached["phase"] == "finetune").sum() == FINETUNE["fine_tune_epochs"]
    pd.testing.assert_frame_equal(cached, whole, rtol=1e-4)


def test_activations_that_do_not_fit_go_to_float16_or_are_not_cached(separable, source, tmp_path, monkeypatch):
    summary = finetune(source, separable, out=str(tmp_path / "fits"), **FINETUNE)
    report = summary["caches"]["finetune"]
    images = report["views"] * sum(summary["dataset"]["train_counts"].values()) + sum(
        summary["dataset"]["val_counts"].values()
    )
    float32_bytes = images * torch.Size(report["shape"]).numel() * 4

    monkeypatch.setattr(features, "memory_budget", lambda device: int(float32_bytes * 0.75))
    half = finetune(source, separable, out=str(tmp_path / "half"), **FINETUNE)
    assert half["caches"]["finetune"]["dtype"] == "float16"
    assert half["caches"]["finetune"]["boundary"] == report["boundary"]

    monkeypatch.setattr(features, "memory_budget", lambda device: 16)
    none = finetune(source, separable, out=str(tmp_path / "none"), **FINETUNE)
    assert none["caches"]["finetune"]["boundary"] is None
    assert "exceed the budget" in none["caches"]["finetune"]["reason"]
    assert none["status"] == "completed" and none["epochs_run"] == FINETUNE["epochs"] + FINETUNE["fine_tune_epochs"]


def test_runs_from_scratch_cache_nothing(separable, tmp_path):
    summary = train(TrainConfig(data=str(separable), epochs=1, out=str(tmp_path / "run"), **FAST))
    assert summary["caches"] == {}
