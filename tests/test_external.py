"""External test sets: prepared with every image a test image, scored whole, classes matched by name or mapped, and
a set that lacks some of the model's classes evaluated over those it has."""

import os
import shutil

import pandas as pd
import pytest
from PIL import Image

from lowmed import evaluate, prepare, train
from lowmed.config import TrainConfig
from lowmed.contracts import PRIMARY_TEST
from lowmed.data.manifest import PreparedDataset
from lowmed.errors import LowmedError
from tests.conftest import FAST
from tests.factory import make_kermany
from tests.test_cli import run_cli


@pytest.fixture
def run(trained_run, tmp_path):
    return shutil.copytree(trained_run, tmp_path / "run")


def _other_site(root, names=("normal", "pneumonia")):
    """Another site's images in flat class folders (no splits), its classes named its own way."""
    source = make_kermany(root / "src", {"all": {"NORMAL": 10, "PNEUMONIA": 10}})
    flat = root / "site"
    for ours, theirs in zip(("NORMAL", "PNEUMONIA"), names):
        shutil.copytree(source / "all" / ours, flat / theirs)
    return flat


def test_prepare_role_test_makes_every_image_a_test_image_and_training_on_it_is_refused(run, tmp_path, capsys):
    code, _, err = run_cli(
        capsys, "prepare", str(_other_site(tmp_path)), "--role", "test", "-o", str(tmp_path / "prepared")
    )
    assert code in (0, None), err
    dataset = PreparedDataset.load(tmp_path / "prepared")
    assert set(dataset.manifest["split"]) == {"test"} and len(dataset.manifest) == 20 and dataset.role == "test"
    code, _, err = run_cli(capsys, "evaluate", str(run), "--data", str(dataset.root), "--split", "all", "-q")
    assert code in (0, None), err
    assert pd.read_json(run / "eval" / "external-prepared-all" / "metrics.json", typ="series")["n"] == 20
    code, _, err = run_cli(capsys, "train", str(tmp_path / "prepared"), "-o", str(tmp_path / "r"))
    assert code == 2 and "prepared as an external test set (--role test)" in err and not (tmp_path / "r").exists()
    code, _, err = run_cli(capsys, "subsample", str(tmp_path / "prepared"), "--per-class", "5")
    assert code == 2 and "external test set" in err


def test_a_raw_folder_given_to_evaluate_is_scored_whole_with_classes_matched_ignoring_case(
    run, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    site = _other_site(tmp_path)
    code, out, err = run_cli(capsys, "evaluate", str(run), "--data", str(site), "--bootstrap", "20")
    assert code in (0, None), err
    prepared = tmp_path / "lowmed-data" / "site-external"
    assert "as an external test set" in out + err and "20 image(s) scored" in " ".join(out.split())
    report = pd.read_json(run / "eval" / "external-site-external-test" / "metrics.json", typ="series")
    assert report["n"] == 20 and report["dataset"]["external"] and report["absent_classes"] == []
    assert PreparedDataset.load(prepared).role == "test"


def test_a_raw_folder_that_changed_since_it_was_scored_is_prepared_again(run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    site = _other_site(tmp_path)
    assert evaluate(run, data=site, bootstrap=0).n == 20
    assert evaluate(run, data=site, bootstrap=0).n == 20  # unchanged: the prepared copy is used
    for removed in sorted((site / "normal").iterdir())[:4]:
        removed.unlink()
    image = Image.open(next((site / "pneumonia").iterdir())).convert("L")
    image.putpixel((0, 0), 255 - image.getpixel((0, 0)))
    image.save(site / "pneumonia" / "new.png")  # a new image, not a duplicate
    code, out, err = run_cli(capsys, "evaluate", str(run), "--data", str(site), "--bootstrap", "0")
    assert code in (0, None) and "changed since it was prepared" in " ".join(err.split())
    report = pd.read_json(run / "eval" / "external-site-external-test" / "metrics.json", typ="series")
    assert report["n"] == 17 and "unreadable" not in out


def test_class_names_that_differ_need_a_class_map(run, tmp_path, capsys):
    site = prepare(_other_site(tmp_path, ("healthy", "sick")), tmp_path / "prepared", role="test")
    code, _, err = run_cli(capsys, "evaluate", str(run), "--data", str(site.root))
    assert code == 2 and "healthy, sick are not among the model's (NORMAL, PNEUMONIA)" in err and "--class-map" in err
    code, _, err = run_cli(capsys, "evaluate", str(run), "--data", str(site.root), "--class-map", "healthy=ILL")
    assert code == 2 and "the model has no class 'ILL'" in err
    report = evaluate(run, data=site.root, class_map={"healthy": "NORMAL", "sick": "PNEUMONIA"}, bootstrap=0)
    assert report.n == 20 and report.class_map == {"healthy": "NORMAL", "sick": "PNEUMONIA"}
    predictions = pd.read_csv(run / "eval" / "external-prepared-test" / "predictions.csv")
    assert set(predictions["label"]) == {"NORMAL", "PNEUMONIA"}


def test_split_all_scores_every_image_of_a_prepared_dataset(run, separable):
    report = evaluate(run, split="all", bootstrap=0)
    assert report.n == len(PreparedDataset.load(separable).manifest) and report.split == "all"


def test_a_set_with_some_of_a_multiclass_models_classes_is_evaluated_over_those(ham, tmp_path):
    dataset = prepare(ham, tmp_path / "ham", min_val_per_class=2)
    run = tmp_path / "run"
    train(TrainConfig(data=str(dataset.root), epochs=1, out=str(run), **FAST))
    rows = dataset.manifest[dataset.manifest["label"].isin(["bcc", "mel", "nv"])]
    pd.DataFrame({"path": dataset.image_paths(rows), "label": rows["label"].str.upper()}).to_csv(
        tmp_path / "clinic.csv", index=False
    )
    clinic = prepare(tmp_path / "clinic.csv", tmp_path / "clinic", role="test", allow_outside_root=True)
    report = evaluate(run, data=clinic.root, bootstrap=0)
    assert report.absent_classes == ["akiec", "bkl", "df", "vasc"] and report.n == len(rows)
    assert 0 <= report.metrics["macro_auroc"] <= 1 and 0 <= report.metrics["balanced_accuracy"] <= 1


def test_a_study_evaluates_every_run_on_its_external_sets_and_reports_them_beside_its_own(kermany, tmp_path, capsys):
    import yaml

    from lowmed import run_experiment
    from lowmed.contracts import RunDir

    study = tmp_path / "study.yaml"
    site = _other_site(tmp_path)
    study.write_text(
        yaml.safe_dump(
            {
                "name": "ext",
                "out": str(tmp_path / "out"),
                "datasets": [
                    {
                        "name": "cxr",
                        "data": str(kermany),
                        "prepare": {"min_val_per_class": 4},
                        "external": [{"name": "site", "data": str(site)}],
                    }
                ],
                "arms": [
                    {"name": "A", "model": "simplecnn", "weights": "none"},
                    {"name": "A-fast", "model": "simplecnn", "weights": "none", "options": {"lr": 0.01}},
                ],
                "per_class": [5],
                "seeds": [0, 1],
                "train": {"image_size": 32, "batch_size": 8, "epochs": 1},
                "evaluate": {"bootstrap": 0},
                "compare": {"resamples": 50},
            }
        )
    )
    result = run_experiment(study)
    assert PreparedDataset.load(tmp_path / "out" / "data" / "site").role == "test"
    aurocs = {"own": [], "site": []}
    for run in result.runs:
        folder = RunDir(run.run_dir)
        external = folder.evaluation("test", "site").read_report()
        assert external.n == 20 and external.dataset["external"]
        if run.arm.name == "A":
            aurocs["own"].append(folder.evaluation("test").read_report().metrics["auroc"])
            aurocs["site"].append(external.metrics["auroc"])
    report = (tmp_path / "out" / "report.md").read_text()
    row = f"| cxr | 5 | A | {sum(aurocs['own']) / 2:.3f} (2) | {sum(aurocs['site']) / 2:.3f} (2) |"
    assert "## External validation" in report and row in report
    # the arms' paired test on the external set: compare's, on the site's 20 images, both seeds paired
    on_site = result.external["site"]
    assert on_site.external == "site" and {run["n_test"] for run in on_site.runs} == {20}
    (test,) = [row for row in on_site.comparisons if row["test"] == PRIMARY_TEST]
    assert test["seeds"] == 2 and {test["a"], test["b"]} == {"A · simplecnn", "A-fast · simplecnn"}
    assert "### Paired differences on site (a − b)" in report
    assert f"{test['estimate']:+.3f} [{test['ci_low']:+.3f}, {test['ci_high']:+.3f}]" in report
    (own,) = [row for row in result.comparison.comparisons if row["test"] == test["test"]]
    assert own["estimate"] != test["estimate"]  # the external set's test, not the own split's again
    # the same comparison from the command line, made again from the run dirs
    code, out, _ = run_cli(
        capsys,
        *("compare", str(tmp_path / "out" / "runs"), "--external", "site", "--resamples", "50"),
        *("-o", str(tmp_path / "again")),
    )
    assert code == 0 and "runs · external site" in out
    again = pd.read_csv(tmp_path / "again" / "stats.csv")
    assert again.loc[again["test"] == test["test"], "estimate"].item() == pytest.approx(test["estimate"])


def test_compare_on_an_external_set_leaves_out_the_runs_not_evaluated_on_it(run, tmp_path):
    from lowmed import compare_runs

    with pytest.raises(LowmedError, match="no completed runs evaluated on the external test set site found") as refused:
        compare_runs([run], external="site", out=tmp_path / "c")
    assert (
        f"(1 left out; {run}: not evaluated on the external test set site; run: lowmed evaluate {run} --data DIR"
        in (str(refused.value))
    )


def test_an_external_set_needs_a_name_and_data(tmp_path):
    import yaml

    from lowmed.experiment.study import load_study

    study = tmp_path / "study.yaml"
    dataset = {"name": "cxr", "data": "x", "external": [{"name": "cxr", "data": "y"}]}
    arms = [{"name": "A", "model": "simplecnn"}]
    study.write_text(yaml.safe_dump({"name": "s", "datasets": [dataset], "arms": arms, "per_class": [5], "seeds": [0]}))
    with pytest.raises(LowmedError, match="every external set needs a name of its own"):
        load_study(study)
    dataset["external"] = [{"name": "site", "data": str(tmp_path / "nowhere")}]
    (tmp_path / "x").mkdir()
    dataset["data"] = str(tmp_path / "x")
    study.write_text(yaml.safe_dump({"name": "s", "datasets": [dataset], "arms": arms, "per_class": [5], "seeds": [0]}))
    with pytest.raises(LowmedError, match="external set 'site': data .*nowhere does not exist"):
        load_study(study)


def test_a_study_keeps_its_prepared_copy_of_a_source_that_changed_and_says_so(tmp_path, capsys):
    from lowmed.experiment.plan import prepared
    from lowmed.experiment.study import DatasetSpec

    site = _other_site(tmp_path)
    spec = DatasetSpec(name="site", data=str(site), prepare={"role": "test"})
    first = prepared(spec, tmp_path / "study")
    next((site / "normal").iterdir()).unlink()
    again = prepared(spec, tmp_path / "study")
    assert len(again.manifest) == len(first.manifest) == 20
    assert "changed since this study prepared it" in " ".join(capsys.readouterr().err.split())


def test_a_copy_of_the_same_source_is_no_change_but_a_relabelled_image_is(ham, tmp_path, capsys):
    """New modification times (a copy on another machine, a fresh download) leave a source as it was; a label
    changed in its metadata, the file's size the same, does not."""
    from lowmed.experiment.plan import prepared
    from lowmed.experiment.study import DatasetSpec

    source = shutil.copytree(ham, tmp_path / "ham")
    spec = DatasetSpec(name="ham", data=str(source))
    prepared(spec, tmp_path / "study")
    for path in source.rglob("*"):
        os.utime(path, (1e9, 1e9))
    prepared(spec, tmp_path / "study")
    assert "changed since" not in capsys.readouterr().err
    metadata = source / "HAM10000_metadata.csv"
    metadata.write_text(metadata.read_text().replace(",mel,", ",bcc,", 1))
    prepared(spec, tmp_path / "study")
    assert "changed since this study prepared it" in " ".join(capsys.readouterr().err.split())
