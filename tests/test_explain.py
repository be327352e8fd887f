"""Saliency maps: every method on every backbone lowmed has, the randomisation check, the pointing game, and the
--explain options of evaluate, predict and compare."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lowmed import train
from lowmed.config import TrainConfig
from lowmed.contracts import EvalDir, ExplainDir
from lowmed.data.lesions import lesion_mask, read_lesions
from lowmed.data.manifest import PreparedDataset
from lowmed.data.synthetic import prepare_demo_dataset
from lowmed.models.forward import Normalizer
from lowmed.models.registry import MODELS, build_model, get_model_spec
from lowmed.models.trained import TrainedModel
from lowmed.preprocessing import Preprocessing
from lowmed.saliency.explain import Case, image_maps
from lowmed.saliency.maps import METHODS, hits, rank_correlations, saliency_maps, target_layer
from tests.test_cli import run_cli


@pytest.fixture
def run(trained_run, tmp_path):
    return shutil.copytree(trained_run, tmp_path / "run")


@pytest.mark.parametrize("name", [*MODELS, "timm:efficientnet_lite0", "timm:resnet18"])
def test_every_backbone_names_a_layer_with_spatial_maps(name):
    spec = get_model_spec(name)
    model = build_model(spec, 2).eval()
    seen = []
    target_layer(model, spec.cam_layer).register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    size = max(spec.min_input_size, 64)
    with torch.no_grad():
        model(torch.rand(1, 3, size, size))
    assert len(seen) == 1 and len(seen[0]) == 4 and seen[0][-1] >= 2, seen


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_one_non_negative_map_per_image_for_simplecnn_and_resnet18(method):
    torch.manual_seed(0)
    images = torch.rand(3, 3, 32, 32)
    for name in ("simplecnn", "resnet18"):
        model = build_model(get_model_spec(name), 2).eval()
        normalize = Normalizer(Preprocessing(32), torch.device("cpu"))
        maps = saliency_maps(model, get_model_spec(name).cam_layer, normalize, images, torch.tensor([0, 1, 1]), method)
        assert maps.shape == (3, 32, 32) and (maps >= 0).all() and np.isfinite(maps).all()


def test_rank_correlation_is_spearmans():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    a, b = rng.random((2, 4, 8, 8))
    b[1] = a[1] ** 3  # same order
    expected = [spearmanr(x.ravel(), y.ravel()).statistic for x, y in zip(a, b)]
    assert np.allclose(rank_correlations(a, b), expected) and rank_correlations(a, b)[1] == pytest.approx(1)
    assert np.isnan(rank_correlations(np.zeros((1, 4, 4)), a[:1, :4, :4]))[0]


def test_evaluate_explains_the_most_confident_right_and_wrong_calls(run, capsys):
    code, out, err = run_cli(
        capsys, "evaluate", str(run), "--explain", "gradcam", "--explain-count", "2", "--bootstrap", "20", "-q"
    )
    assert code in (0, None), err
    folder = EvalDir(run / "eval" / "test").explanations
    record = folder.read()
    index = pd.read_csv(folder.index, keep_default_na=False)
    predictions = pd.read_csv(EvalDir(run / "eval" / "test").predictions)
    assert record.method == "gradcam" and record.layer == "features.29" and record.images == len(index)
    assert set(index["case"]) <= {"true positive", "false positive", "false negative"}
    assert index.groupby("case").size().max() <= 2 and (index["explained"] == "PNEUMONIA").all()
    true_positives = predictions[(predictions["label"] == "PNEUMONIA") & (predictions["predicted"] == "PNEUMONIA")]
    top = true_positives.nlargest(2, "prob:PNEUMONIA")["prob:PNEUMONIA"].to_numpy()
    assert np.allclose(index.loc[index["case"] == "true positive", "probability"], top)
    for png in index["png"]:
        with Image.open(folder.path / png) as image:
            assert image.format == "PNG" and image.width > 300
    maps = np.load(folder.maps)["maps"]
    assert maps.shape == (len(index), 32, 32)
    check = record.randomisation
    assert {"correlation", "reference", "flagged", "verdict"} <= set(check) and -1 <= check["correlation"] <= 1
    assert "randomisation check" in out or check["flagged"]
    assert record.checkpoint["sha256"] and "gradcam maps of" in out


def test_predict_explains_every_readable_input_and_keeps_earlier_maps(run, separable, tmp_path, capsys):
    dataset = PreparedDataset.load(separable)
    images = [str(p) for p in dataset.image_paths(dataset.split("test"))[:3]]
    out = tmp_path / "p.csv"
    code, _, err = run_cli(capsys, "predict", str(run), *images, "--out", str(out), "--explain", "occlusion", "-q")
    assert code in (0, None), err
    index = pd.read_csv(ExplainDir(tmp_path / "explain").index)
    assert list(index["path"]) == images and set(index["case"]) == {"input"}
    code, _, err = run_cli(
        capsys, "predict", str(run), *images, "--out", str(tmp_path / "q.csv"), "--explain", "occlusion"
    )
    assert code == 2 and "--explain-dir" in err and "exists" in err and not (tmp_path / "q.csv").exists()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--explain", "lime"], "--explain 'lime': expected one of gradcam, gradcam++"),
        (["--explain", "gradcam", "--explain-count", "0"], "--explain-count 0: expected at least 1"),
    ],
)
def test_bad_explain_options_are_refused_before_anything_is_written(run, capsys, args, expected):
    before = sorted(run.rglob("*"))
    code, _, err = run_cli(capsys, "evaluate", str(run), *args)
    assert code == 2 and expected in err and sorted(run.rglob("*")) == before


def test_a_missing_captum_names_the_extra_to_install(run, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "captum" else real(name, *a))
    code, _, err = run_cli(capsys, "evaluate", str(run), "--explain", "gradcam")
    assert code == 2 and "pip install 'lowmed[explain]'" in err


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo radiographs (with their lesion boxes) and a simplecnn that learned them (val AUROC about 0.9)."""
    root = tmp_path_factory.mktemp("demo")
    prepared = prepare_demo_dataset("target", root / "raw", root / "target")
    run = root / "run"
    config = TrainConfig(data=str(prepared.root), image_size=64, epochs=20, patience=20, lr=2e-3, out=str(run))
    train(config)
    return root, run


def _positive_test_cases(run, count):
    trained = TrainedModel.load(run, device="cpu")
    dataset = PreparedDataset.load(trained.config.data)
    test = dataset.split("test")
    paths = dataset.image_paths(test[test["label"] == "PNEUMONIA"])[:count]
    return trained, [Case(path, 1, "input", 0.0) for path in paths]


@pytest.mark.xdist_group("demo")  # one worker trains the module's demo model for both its tests
def test_the_randomisation_check_sets_a_trained_model_apart_from_random_ones_on_the_demo_data(demo):
    """Grad-CAM++ maps of two re-initialised networks are alike (they follow the image); the trained network's
    maps are not like a re-initialised one's."""
    trained, cases = _positive_test_cases(demo[1], 16)
    check = image_maps(trained, cases, "gradcam++").record.randomisation
    assert check["reference"] > 0.4 and abs(check["correlation"]) < check["reference"] - 0.2, check
    assert not check["flagged"] and "depend on the learned weights" in check["verdict"]


@pytest.mark.xdist_group("demo")
def test_compare_explains_every_arm_and_scores_the_pointing_game_above_chance(demo, tmp_path, capsys):
    root, run = demo
    lesions = root / "raw" / "lesions.csv"
    boxes = read_lesions(lesions)
    assert len(boxes) > 100 and all(path.is_file() for path in boxes)
    code, out, err = run_cli(
        capsys, "compare", str(run), "--out", str(tmp_path / "cmp"), "--explain", "occlusion", "--explain-count", "12",
        "--lesions", str(lesions), "-q",
    )  # fmt: skip
    assert code in (0, None), err
    folder = tmp_path / "cmp" / "explain" / "occlusion"
    arms = pd.read_csv(folder / "arms.csv")
    assert len(arms) == 1 and arms.loc[0, "images"] == 12
    assert arms.loc[0, "pointing_game"] > 3 * arms.loc[0, "chance"], arms.to_dict("records")
    assert arms.loc[0, "hits"] == round(arms.loc[0, "pointing_game"] * 12)
    assert len(list(folder.glob("*.png"))) == 12
    record = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert record["attention"] == json.loads(arms.to_json(orient="records"))
    assert "What each arm looks at (occlusion)" in (tmp_path / "cmp" / "compare.md").read_text()
    assert "pointing game" in out


def test_the_pointing_game_counts_a_peak_inside_a_box(tmp_path):
    Image.new("L", (200, 100)).save(tmp_path / "wide.png")
    pd.DataFrame([{"path": "wide.png", "x": 100, "y": 0, "width": 100, "height": 50}]).to_csv(
        tmp_path / "lesions.csv", index=False
    )
    boxes = read_lesions(tmp_path / "lesions.csv")
    mask = lesion_mask(tmp_path / "wide.png", boxes[(tmp_path / "wide.png").resolve()], 8)
    assert mask[:4, 4:].all() and mask.sum() == 16  # the top-right quarter of the square input
    maps = np.zeros((2, 8, 8))
    maps[0, 1, 6] = 1
    maps[1, 6, 1] = 1
    assert list(hits(maps, np.stack([mask, mask]))) == [True, False]


@pytest.mark.parametrize(
    "rows, args, expected",
    [
        (None, ["--lesions", "lesions.csv"], "--lesions scores saliency maps: give --explain"),
        ("path,x,y\na.png,1,2\n", ["--explain", "gradcam", "--lesions", "lesions.csv"], "no column(s) width, height"),
        ("path,x,y,width,height\na.png,1,2,0,3\n", ["--explain", "gradcam", "--lesions", "lesions.csv"], "row 2"),
    ],
)
def test_bad_lesion_boxes_are_refused(run, tmp_path, capsys, monkeypatch, rows, args, expected):
    monkeypatch.chdir(tmp_path)
    if rows:
        (tmp_path / "lesions.csv").write_text(rows)
    code, _, err = run_cli(capsys, "compare", str(run), "--out", str(tmp_path / "cmp"), *args)
    assert code == 2 and expected in err and not (tmp_path / "cmp").exists()
