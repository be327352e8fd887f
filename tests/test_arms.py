"""Arms by name: the run-folder contract, compare's cells and baseline, studies checked before they run."""

import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from lowmed import compare_runs, evaluate, prepare, run_experiment, train
from lowmed.cli import app, main
from lowmed.config import TrainConfig
from lowmed.contracts import PRIMARY_TEST, SCHEMA, RunDir, TrainSummary
from lowmed.errors import LowmedError
from lowmed.experiment import load_study
from tests.conftest import FAST
from tests.factory import make_kermany

TINY = {"image_size": 32, "batch_size": 8, "epochs": 2, "fine_tune_epochs": 1, "lr": 0.001}


def write_study(path, **changes):
    values = {
        "name": "arms",
        "out": str(path.parent / "study"),
        "per_class": [5],
        "seeds": [0, 1],
        "train": TINY,
        "evaluate": {"bootstrap": 20},
        "compare": {"resamples": 20},
        **changes,
    }
    path.write_text(yaml.safe_dump(values))
    return path


def test_two_arms_of_one_model_and_weight_kind_stay_apart(tmp_path, kermany, chexpert, nih):
    """Two pretrain arms on two corpora and two scratch arms with other options: four rows, all pairs tested,
    each arm by its YAML name; evaluated and compared on val, with an explicit baseline."""
    study = write_study(
        tmp_path / "study.yaml",
        datasets=[{"name": "cxr", "data": str(kermany), "prepare": {"min_val_per_class": 4}}],
        arms=[
            {"name": "A-fast", "model": "simplecnn", "weights": "none"},
            {"name": "A-slow", "model": "simplecnn", "weights": "none", "options": {"lr": 0.0001}},
            {
                "name": "C-chexpert",
                "model": "simplecnn",
                "pretrain": {"dataset": {"name": "chex", "data": str(chexpert)}, "epochs": 1},
            },
            {
                "name": "C-nih",
                "model": "simplecnn",
                "pretrain": {"dataset": {"name": "nih", "data": str(nih)}, "epochs": 1},
            },
        ],
        evaluate={"bootstrap": 20, "split": "val"},
        compare={"resamples": 20, "baseline": "A-slow"},
    )
    result = run_experiment(study)
    out = tmp_path / "study"
    assert len(result.pretrain) == 2 and {run.status for run in result.runs} == {"trained"}
    assert result.pretrain[0].run_dir != result.pretrain[1].run_dir

    table = pd.read_csv(out / "compare.csv")
    assert sorted(table["arm"].unique()) == ["A-fast", "A-slow", "C-chexpert", "C-nih"]
    assert len(table) == 8 and (table.groupby("arm").size() == 2).all()  # two seeds each, none overwritten
    stats = pd.read_csv(out / "stats.csv")
    primary = stats[stats["test"] == PRIMARY_TEST]
    pairs = {(a.split(" · ")[0], b.split(" · ")[0]) for a, b in zip(primary["a"], primary["b"])}
    assert len(pairs) == 6  # every pair of the four arms
    assert {("A-fast", "A-slow"), ("C-chexpert", "C-nih")} <= pairs
    assert {b for a, b in pairs if "A-slow" in (a, b)} == {"A-slow"}  # the baseline is always b
    assert primary["vs_baseline"].sum() == 3

    comparison = json.loads((out / "compare.json").read_text())
    assert comparison["split"] == "val" and comparison["baseline"] == "A-slow"
    for run in result.runs:
        assert RunDir(run.run_dir).evaluation("val").exists()
        assert not RunDir(run.run_dir).evaluation("test").exists()
        assert RunDir(run.run_dir).read_summary().arm == run.arm.name
    report = (out / "report.md").read_text()
    assert "baseline arm **A-slow**" in report
    for name in ("A-fast", "A-slow", "C-chexpert", "C-nih"):
        assert f"Arm **{name}**" in report and f"{name} · simplecnn" in report
    assert (
        "A-fast · simplecnn did not differ significantly from A-slow · simplecnn" in report
        or "A-fast · simplecnn improved" in report
        or "A-fast · simplecnn had a lower" in report
    )


def test_pretrain_stages_are_identified_by_everything_that_makes_them(tmp_path, chexpert, kermany):
    corpus = {"name": "chex", "data": str(chexpert)}
    study = write_study(
        tmp_path / "study.yaml",
        datasets=[{"name": "cxr", "data": str(kermany)}],
        arms=[
            {"name": "C1", "model": "simplecnn", "pretrain": {"dataset": corpus, "epochs": 1}},
            {"name": "C2", "model": "simplecnn", "pretrain": {"dataset": corpus, "epochs": 2}},
            {
                "name": "C2-again",
                "model": "simplecnn",
                "pretrain": {"dataset": corpus, "epochs": 2},
                "options": {"lr": 0.01},
            },
        ],
    )
    result = run_experiment(study, dry_run=True)
    assert len(result.pretrain) == 2  # epochs 1 and 2; C2 and C2-again pretrain identically and share a stage
    assert all(stage.name.startswith("simplecnn-on-chex-") for stage in result.pretrain)
    weights = {run.arm.name: run.values["weights"] for run in result.runs}
    assert weights["C2"] == weights["C2-again"] != weights["C1"]


@pytest.mark.parametrize(
    "arms, message",
    [
        (
            [{"name": "A", "model": "simplecnn"}, {"name": "A", "model": "resnet18", "weights": "imagenet"}],
            "two arms have the same name: 'A' and 'A'",
        ),
        ([{"name": "A", "model": "simplecnn"}, {"name": "a", "model": "simplecnn"}], "the same folder name"),
        ([{"name": "A", "model": "simplcnn"}], "arm 'A': --model 'simplcnn' is not known"),
        ([{"name": "B", "model": "simplecnn", "weights": "imagenet"}], "arm 'B': --weights imagenet: simplecnn has no"),
        (
            [{"name": "C", "model": "simplecnn", "weights": "/no/such/weights.pt"}],
            "arm 'C': --weights /no/such/weights.pt",
        ),
        (
            [{"name": "C", "model": "simplecnn", "pretrain": {"dataset": {"name": "nih", "data": "/no/such/corpus"}}}],
            "dataset 'nih' \\(pretraining of arm 'C'\\): data /no/such/corpus does not exist",
        ),
    ],
)
def test_a_bad_study_is_refused_before_anything_runs(tmp_path, kermany, capsys, arms, message):
    study = write_study(tmp_path / "study.yaml", datasets=[{"name": "cxr", "data": str(kermany)}], arms=arms)
    with pytest.raises(LowmedError, match=message):
        load_study(study)
    with pytest.raises(SystemExit) as exit_info:
        main(["experiment", str(study)])
    assert exit_info.value.code == 2 and "error:" in capsys.readouterr().err
    assert not (tmp_path / "study").exists()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"compare": {"baseline": "Z"}}, "compare.baseline 'Z' is not an arm; the arms are 'A'"),
        ({"compare": {"pairs": [["A", "Z"]]}}, "compare.pairs \\[A, Z\\]: expected two different arms of the study"),
        ({"compare": {"pairs": ["A"]}}, "compare.pairs: expected a list of \\[a, b\\] arm pairs"),
        ({"seeds": [0, 0]}, "seeds lists 0 twice"),
        ({"per_class": [5, 10, 5]}, "per_class lists 5 twice"),
        ({"tune": {"space": {"fine_tune_layers": [50, 50]}}}, "the choice 50 is listed twice"),
        ({"evaluate": {"split": "holdout"}}, "evaluate.split 'holdout': expected test, val or train"),
        ({"compare": {"split": "val"}}, "compare: unknown key\\(s\\) split"),
        ({"datasets": [{"name": "cxr", "data": "/no/such/data"}]}, "dataset 'cxr': data /no/such/data does not exist"),
    ],
)
def test_study_options_are_checked_as_a_whole(tmp_path, kermany, changes, message):
    values = {"datasets": [{"name": "cxr", "data": str(kermany)}], "arms": [{"name": "A", "model": "simplecnn"}]}
    study = write_study(tmp_path / "study.yaml", **{**values, **changes})
    with pytest.raises(LowmedError, match=message):
        load_study(study)


@pytest.fixture(scope="module")
def named_runs(separable, tmp_path_factory):
    """The same data, model and seed trained as two named arms."""
    root = tmp_path_factory.mktemp("named")
    for arm, lr in (("first", 1e-3), ("second", 3e-3)):
        train(TrainConfig(data=str(separable), arm=arm, epochs=2, out=str(root / arm), **{**FAST, "lr": lr}))
    return root


def test_compare_baseline_option(named_runs, tmp_path):
    result = compare_runs([named_runs], baseline="first", out=tmp_path, bootstrap=20, resamples=20)
    assert result.baseline == "first" and {row["arm"] for row in result.runs} == {"first", "second"}
    primary = [row for row in result.comparisons if row["test"] == PRIMARY_TEST]
    assert [(row["a"], row["b"]) for row in primary] == [("second · simplecnn", "first · simplecnn")]
    unset = compare_runs([named_runs], out=tmp_path / "unset", bootstrap=20, resamples=20)
    assert unset.baseline is None  # two arms trained from scratch: no default baseline, all pairs
    with pytest.raises(
        LowmedError, match="--baseline 'third': no such arm among the runs; they have 'first', 'second'"
    ):
        compare_runs([named_runs], baseline="third", out=tmp_path)


def test_two_runs_in_one_cell_are_refused_naming_both(trained_run, tmp_path, capsys):
    copy = tmp_path / "copy-of-run"
    shutil.copytree(trained_run, copy)
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(trained_run), str(copy), "--out", str(tmp_path / "cmp"), "-q"])
    out = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert str(trained_run) in out and str(copy) in out and "same comparison cell" in out
    assert not (tmp_path / "cmp" / "compare.csv").exists()


def test_run_dirs_of_an_earlier_lowmed_still_compare_and_evaluate(trained_run, tmp_path):
    """Schema 1: no schema, no arm; the arm is derived from the weights as before."""
    old = tmp_path / "old-run"
    shutil.copytree(trained_run, old, ignore=shutil.ignore_patterns("eval"))
    summary = json.loads((old / "train.json").read_text())
    for key in ("schema", "arm", "error"):
        summary.pop(key, None)
    summary["dataset"].pop("subset_sha256", None)
    (old / "train.json").write_text(json.dumps(summary))
    read = RunDir(old).read_summary()
    assert read.schema == SCHEMA and read.arm == "A scratch" and read.dataset.manifest_sha256

    report = evaluate(old, bootstrap=10)
    assert report["n"] == report.n > 0 and RunDir(old).evaluation("test").exists()
    result = compare_runs([old], out=tmp_path / "cmp")
    assert result.runs[0]["arm"] == "A scratch" and result.baseline == "A scratch"


def test_a_run_dir_from_a_newer_lowmed_is_refused_clearly(trained_run, tmp_path):
    newer = tmp_path / "newer"
    shutil.copytree(trained_run, newer)
    summary = json.loads((newer / "train.json").read_text())
    (newer / "train.json").write_text(json.dumps({**summary, "schema": SCHEMA + 1}))
    with pytest.raises(LowmedError, match="written by a newer lowmed .* upgrade lowmed"):
        TrainSummary.read(newer / "train.json")
    (newer / "train.json").write_text("{not json")
    with pytest.raises(LowmedError, match="train.json: not valid JSON"):
        RunDir(newer).read_summary()


def test_two_prepared_datasets_of_one_folder_name_stay_apart(tmp_path):
    runs = tmp_path / "runs"
    for where, counts in (("site1", 30), ("site2", 34)):
        src = make_kermany(
            tmp_path / where / "src",
            {"train": {"NORMAL": counts, "PNEUMONIA": counts}, "test": {"NORMAL": 6, "PNEUMONIA": 6}},
        )
        prepared = prepare(src, tmp_path / where / "target", min_val_per_class=4)
        train(TrainConfig(data=str(prepared.root), epochs=1, out=str(runs / where), **FAST))
    result = compare_runs([runs], bootstrap=10, resamples=10, out=tmp_path / "cmp")
    names = sorted(row["dataset"] for row in result.runs)
    assert len(set(names)) == 2 and all(name.startswith("target@") for name in names)
    assert len(result.groups) == 2 and len(result.figures) == 0  # trained on all images: no learning curve


def test_every_train_config_field_is_one_option_and_every_option_a_field():
    import typer.main

    command = typer.main.get_command(app)
    fields = set(TrainConfig.__dataclass_fields__)
    for name, extra in (
        ("train", {"config", "resume", "overwrite", "strict", "quiet", "verbose", *TRACK_OPTIONS}),
        ("finetune", {"source", "config", "overwrite", "strict", "quiet", "verbose", *TRACK_OPTIONS}),
    ):
        params = [param.name for param in command.commands[name].params]
        assert len(params) == len(set(params)), name
        assert set(params) - fields == extra, name
        assert fields - set(params) == set(), name


TRACK_OPTIONS = ("track", "track_uri", "track_experiment")


def test_the_command_line_starts_without_heavy_imports():
    code = (
        "import sys, lowmed.cli; "
        "print(sorted(m for m in ('torch', 'pandas', 'numpy', 'matplotlib', 'sklearn', 'scipy', 'mlflow', 'optuna') "
        "if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


def test_conclusions_never_read_through_a_double_negative():
    from lowmed.experiment.report import _sentence

    row = {
        "a": "X",
        "b": "Y",
        "estimate": -0.1,
        "ci_low": -0.15,
        "ci_high": -0.05,
        "p": 0.001,
        "p_holm": 0.002,
        "significant": True,
        "per_class": 50,
        "metric": "auroc",
        "vs_baseline": False,
    }
    assert _sentence(row).startswith("At 50 per class, Y improved AUROC over X by +0.100 [+0.050, +0.150], p = 0.001")
    against_baseline = _sentence({**row, "vs_baseline": True})  # Y is the baseline: the difference stays X − Y
    assert against_baseline.startswith("At 50 per class, X had a lower AUROC than Y: -0.100 [-0.150, -0.050]")


def test_a_finished_run_is_not_reported_under_options_it_was_not_trained_with(tmp_path, kermany, capsys):
    arms = [{"name": "A", "model": "simplecnn", "weights": "none"}]
    study = write_study(tmp_path / "study.yaml", datasets=[{"name": "cxr", "data": str(kermany)}], arms=arms, seeds=[0])
    assert run_experiment(study).runs[0].status == "trained"
    assert run_experiment(study).runs[0].status == "done before"  # unchanged: found finished, not trained again
    run = tmp_path / "study" / "runs" / "cxr-a-simplecnn-n5-seed0"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    write_study(
        tmp_path / "study.yaml",
        datasets=[{"name": "cxr", "data": str(kermany)}],
        arms=arms,
        seeds=[0],
        train={**TINY, "epochs": 3, "lr": 0.002},
    )
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit:
        main(["experiment", str(study)])
    err = capsys.readouterr().err.strip()
    assert exit.value.code == 2 and len(err.splitlines()) == 1, err
    assert f"{run} was trained with epochs 2 (now 3), lr 0.001 (now 0.002); the study file changed since" in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


# The quickstart as lowmed shipped it before datasets could list external test sets (and before its budget changed)
EARLIER_QUICKSTART = """
name: quickstart
datasets: [{name: demo-cxr, demo: target}]
arms:
  - {name: A, model: simplecnn, weights: none, options: {epochs: 30}}
  - {name: B, model: resnet18, weights: imagenet}
  - {name: C, model: simplecnn, pretrain: {dataset: {name: demo-corpus, demo: corpus}, epochs: 12, lr: 0.001}}
per_class: [20, 50, 100]
seeds: [0, 1, 2]
train: {image_size: 64, batch_size: 32, epochs: 15, fine_tune_epochs: 15, lr: 0.001, fine_tune_lr: 0.0001, patience: 10}
evaluate: {bootstrap: 500}
compare: {metric: auroc, resamples: 500}
"""


def test_a_pretrain_stage_keeps_its_name_across_lowmed_versions(tmp_path):
    """A stage's folder is its identity: if it changed, a study run again after an upgrade would pretrain again.
    The earlier quickstart's stage is named as lowmed named it then."""
    study = tmp_path / "quickstart.yaml"
    study.write_text(EARLIER_QUICKSTART + f"out: {tmp_path / 'runs'}\n")
    result = run_experiment(study, dry_run=True)
    assert [stage.name for stage in result.pretrain] == ["simplecnn-on-demo-corpus-4fbca6b8"]
