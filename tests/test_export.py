"""lowmed export: ONNX and TorchScript files that give the run's probabilities, with a card and a parity check."""

import json
import shutil

import numpy as np
import onnxruntime
import pytest
import torch

from lowmed import evaluate, export, predict
from lowmed.data.manifest import PreparedDataset
from lowmed.errors import LowmedError
from lowmed.exporting import ProbabilityModel, parity, parity_images
from lowmed.models.registry import build_model, get_model_spec
from lowmed.models.trained import TrainedModel
from tests.test_cli import run_cli


@pytest.fixture
def run(trained_run, tmp_path):
    return shutil.copytree(trained_run, tmp_path / "run")


@pytest.mark.parametrize("format", ["onnx", "torchscript"])
def test_an_export_reloads_and_gives_the_runs_probabilities_at_any_batch_size(format, run, separable, tmp_path, capsys):
    evaluate(run, threshold="youden", bootstrap=20)
    code, out, err = run_cli(capsys, "export", str(run), "--format", format, "-q")
    assert code in (0, None), err
    folder = run / f"export-{format}"
    assert "max |Δp|" in out
    dataset = PreparedDataset.load(separable)
    images = dataset.image_paths(dataset.split("test"))[:5]
    expected = predict(run, images, out=tmp_path / "p.csv").table["prob:PNEUMONIA"].to_numpy()
    from lowmed.data.loading import decode_square

    pixels = torch.stack([decode_square(p, 32) for p in images]).float().div(255)
    if format == "onnx":
        session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        got = session.run(None, {"image": pixels.numpy()})[0]
    else:
        got = torch.jit.load(str(folder / "model.pt"))(pixels).detach().numpy()
    assert got.shape == (5, 2) and np.abs(got[:, 1] - expected).max() < 1e-4

    preprocessing = json.loads((folder / "preprocessing.json").read_text())
    assert preprocessing["classes"] == ["NORMAL", "PNEUMONIA"] and preprocessing["input_size"] == 32
    assert preprocessing["threshold_source"].startswith("youden on the val split")
    card = (folder / "MODEL_CARD.md").read_text()
    assert "SHA-256" in card and "| auroc |" in card and "Max absolute difference of probabilities" in card


def test_the_parity_check_fails_against_another_model(run):
    export(run, "torchscript")
    trained = TrainedModel.load(run, device="cpu", amp=False)
    other = TrainedModel.load(run, device="cpu", amp=False)
    other.model = build_model(get_model_spec("simplecnn"), 2, trained.config.head).eval()  # untrained
    images = parity_images(trained)
    assert parity(run / "export-torchscript" / "model.pt", "torchscript", ProbabilityModel(trained), images) < 1e-4
    assert parity(run / "export-torchscript" / "model.pt", "torchscript", ProbabilityModel(other), images) > 1e-4


def test_a_failed_parity_writes_nothing_and_exits_1(run, monkeypatch, capsys):
    monkeypatch.setattr("lowmed.exporting.parity", lambda *args: 0.5)
    code, _, err = run_cli(capsys, "export", str(run), "--format", "torchscript", "-q")
    assert code == 1 and "differs from PyTorch by 5.00e-01" in err and "nothing was written" in err
    assert not (run / "export-torchscript").exists()


def test_bad_export_options_are_one_line_and_exit_2(run, capsys):
    code, _, err = run_cli(capsys, "export", str(run), "--format", "tflite")
    assert code == 2 and "--format 'tflite': expected onnx or torchscript" in err
    (run / "export-onnx").mkdir()
    code, _, err = run_cli(capsys, "export", str(run))
    assert code == 2 and "exists; give another folder, or --overwrite" in err
    with pytest.raises(LowmedError, match="no such checkpoint"):
        export(run, checkpoint="missing.pt")
