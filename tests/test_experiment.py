"""A tiny study end to end: grid, pretrain stage, skipped arm, retry, resume, compare and report."""

import json
import os
import shutil
import statistics
from datetime import timedelta
from pathlib import Path
from urllib.error import URLError

import pandas as pd
import pytest
import torch
import yaml

from lowmed import compare_models, compare_runs, run_experiment, train
from lowmed.cli import main
from lowmed.comparison.render import headline_table
from lowmed.config import TrainConfig
from lowmed.contracts import PRIMARY_TEST, Comparison, RunDir, StudyLog, TrainSummary
from lowmed.errors import LowmedError
from lowmed.experiment import execute as execute_module
from lowmed.experiment import load_study
from lowmed.experiment.report import _time_section, results_tables
from lowmed.training import train as train_module
from tests.conftest import FAST


@pytest.fixture
def study(tmp_path, kermany, chexpert):
    path = tmp_path / "study.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "notes": "Tiny images; two epochs.",
                "out": str(tmp_path / "study"),
                "publish": str(tmp_path / "published"),
                "datasets": [{"name": "cxr", "data": str(kermany), "prepare": {"min_val_per_class": 4}}],
                "arms": [
                    {"name": "A", "model": "simplecnn", "weights": "none"},
                    {"name": "B", "model": "resnet18", "weights": "imagenet"},
                    {
                        "name": "C",
                        "model": "simplecnn",
                        "pretrain": {"dataset": {"name": "cx", "data": str(chexpert)}, "epochs": 1},
                    },
                ],
                "per_class": [5, 10],
                "seeds": [0, 1],
                "train": {"image_size": 32, "batch_size": 8, "epochs": 2, "fine_tune_epochs": 1, "lr": 0.001},
                "evaluate": {"bootstrap": 40},
                "compare": {"resamples": 40},
            }
        )
    )
    return path


@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def no_network(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)


def test_dry_run_plans_the_grid_without_training(study, tmp_path):
    result = run_experiment(study, dry_run=True)
    assert len(result.pretrain) == 1 and len(result.runs) == 12  # 1 dataset × 3 arms × 2 sizes × 2 seeds
    assert [r.name for r in result.runs[:3]] == [
        "cxr-a-simplecnn-n5-seed0",
        "cxr-b-resnet18-n5-seed0",
        "cxr-c-simplecnn-n5-seed0",
    ]
    assert not (tmp_path / "study" / "runs").exists()
    assert result.power.family_size == 4 and result.power.seeds == 2  # B and C against A, at 5 and 10 per class
    assert "assumed before any run" in result.power.source and 0 < result.power.detectable < 1


def test_dry_run_says_the_smallest_difference_the_study_can_detect(study, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["experiment", str(study), "--dry-run"])
    shown = capsys.readouterr().out.replace("\n", " ")
    assert exit_info.value.code == 0 and "Sample size: with 2 seeds and a primary family of 4 comparisons" in shown
    assert "the primary test detects a difference in AUROC of 0." in shown and "80% power" in shown


def test_a_study_continues_from_its_published_record_on_another_machine(study, tmp_path, offline, monkeypatch):
    """Its runs and checkpoints gone (another machine with the repository only), the study finds every published run
    done and trains nothing; with a third seed it trains that seed's runs alone, and the pretrain stage again for
    them — the same stage, bit for bit, on a CPU."""
    first = run_experiment(study)
    shutil.rmtree(first.study.out)

    def no_training(config, **kwargs):
        raise AssertionError(f"trained {config.out}")

    monkeypatch.setattr("lowmed.experiment.execute.train", no_training)
    preview = run_experiment(study, dry_run=True)  # what the new machine's user sees first
    held = [run.name for run in preview.runs if (run.status, run.detail) == ("done before", "in the published record")]
    assert len(held) == 8 and preview.restored == held and preview.pretrain[0].status == "done before"
    assert {run.status for run in preview.runs if run.name not in held} == {"planned"}
    assert not first.study.out.exists()  # and it wrote nothing
    again = run_experiment(study)
    assert {run.status for run in again.runs if run.arm.name != "B"} == {"done before"}
    assert again.restored == held and again.pretrain[0].status == "done before"
    assert [cell.status for cell in again.cells] == []  # no tuning in this study: nothing to restore there
    assert len(again.log.invocations) == 2  # the record's invocation, and this one
    pd.testing.assert_frame_equal(
        pd.read_csv(first.study.out / "stats.csv"), pd.read_csv(tmp_path / "published" / "stats.csv")
    )
    report = (first.study.out / "report.md").read_text()
    assert "**Incomplete: 8 of 12 runs.**" in report and "Runs: 9 of 13 completed" in report  # B skipped offline

    monkeypatch.setattr("lowmed.experiment.execute.train", train_module.train)
    values = yaml.safe_load(study.read_text())
    study.write_text(yaml.safe_dump({**values, "seeds": [0, 1, 2]}))
    more = run_experiment(study)
    trained = sorted(run.name for run in more.runs if run.status == "trained")
    assert trained == sorted(f"cxr-{arm}-simplecnn-n{n}-seed2" for arm in ("a", "c") for n in (5, 10))
    assert more.pretrain[0].status == "trained"  # its checkpoint was not published; seed 2's C runs need it
    restored = TrainSummary.read(first.study.out / "runs" / "cxr-c-simplecnn-n5-seed0" / "train.json")
    again_trained = TrainSummary.read(first.study.out / "runs" / "cxr-c-simplecnn-n5-seed2" / "train.json")
    assert restored.weights.sha256 == again_trained.weights.sha256  # the stage trained again is the same, bit for bit
    checklist = (first.study.out / "report.md").read_text()
    assert f"the pretrained checkpoint's SHA-256 {restored.weights.sha256}" in checklist

    shutil.rmtree(first.study.out)  # C's pretraining changed: its runs are not the record's, A's still are
    arms = [{**a, "pretrain": {**a["pretrain"], "epochs": 2}} if "pretrain" in a else a for a in values["arms"]]
    study.write_text(yaml.safe_dump({**values, "arms": arms}))
    monkeypatch.setattr("lowmed.experiment.execute.train", no_training)
    restaged = run_experiment(study, dry_run=True)
    assert sorted(restaged.restored) == sorted(f"cxr-a-simplecnn-n{n}-seed{s}" for n in (5, 10) for s in (0, 1))
    assert restaged.pretrain[0].status == "planned"

    monkeypatch.setattr("lowmed.experiment.execute.train", train_module.train)
    shutil.rmtree(first.study.out, ignore_errors=True)  # a later version of the study: its record's runs are not taken
    study.write_text(yaml.safe_dump({**values, "seeds": [0], "train": {**values["train"], "epochs": 3}}))
    changed = run_experiment(study)
    assert changed.restored == [] and {run.status for run in changed.runs if run.arm.name != "B"} == {"trained"}
    assert len(changed.log.invocations) == 1  # the earlier version's invocations are not this study's


def test_study_end_to_end_with_skip_retry_and_resume(study, tmp_path, offline, monkeypatch, capsys):
    real_train, failures = train_module.train, []

    def flaky_train(config, **kwargs):  # the first attempt of one run crashes
        if config.out.endswith("cxr-a-simplecnn-n10-seed1") and not failures:
            failures.append(1)
            raise RuntimeError("simulated crash")
        return real_train(config, **kwargs)

    monkeypatch.setattr("lowmed.experiment.execute.train", flaky_train)
    result = run_experiment(study)
    statuses = {run.name: (run.status, run.detail) for run in result.runs}
    assert result.pretrain[0].status == "trained"
    assert all(statuses[f"cxr-b-resnet18-n{n}-seed{s}"][0] == "skipped" for n in (5, 10) for s in (0, 1))
    assert "is not cached and cannot be downloaded" in statuses["cxr-b-resnet18-n5-seed0"][1]
    assert statuses["cxr-a-simplecnn-n10-seed1"] == (
        "trained",
        "on the second try, after RuntimeError: simulated crash",
    )
    assert sum(status == "trained" for status, _ in statuses.values()) == 8

    out = tmp_path / "study"
    report = (out / "report.md").read_text()
    assert "**Notes.** Tiny images; two epochs." in report and "## Headline" in report
    assert "the bootstrap resamples whole patients." in report  # Kermany's groups
    assert "## Conclusions" in report and "C · simplecnn" in report and "A · simplecnn" in report
    skipped = [line for line in report.splitlines() if "is not cached and cannot be downloaded" in line]
    assert len(skipped) == 1 and skipped[0].startswith("- 4 runs skipped — ")  # said once per arm, not per run
    assert "(runs: cxr-b-resnet18-n5-seed0, " in report
    stats = pd.read_csv(out / "stats.csv")
    primary = stats[stats["test"] == PRIMARY_TEST]
    assert len(primary) == 2 and set(primary["seeds"]) == {2}  # A vs C at N = 5 and 10, two seeds each
    assert {"DeLong", "McNemar"} <= set(stats["test"])
    assert (out / "learning_curve_cxr.png").is_file()
    assert "## Where the time went" in report
    done = [run for run in result.runs if run.status == "trained"]
    summaries = [RunDir(run.run_dir).read_summary() for run in done]
    for summary, seconds in zip([s for s in summaries if s.arm == "A"], (60, 120, 180, 6000)):
        summary.epoch_seconds_total = seconds  # one run slowed by a paused machine does not set the arm's cost
    costs = "\n".join(_time_section(result.study, result.pretrain, done, summaries, result.cells))
    assert f"| A | 4 | {statistics.median([60, 120, 180, 6000]) / 60:.2f} |" in costs
    source = json.loads((out / "runs" / "cxr-c-simplecnn-n5-seed0" / "train.json").read_text())
    assert source["weight_source"] == "run" and source["weights"]["missing"] == []

    _check_published(tmp_path / "published", result)

    again = run_experiment(study)  # resumable: nothing is trained twice
    assert {run.status for run in again.runs} == {"done before", "skipped"}
    assert again.pretrain[0].status == "done before"
    assert [i["worked"] for i in again.log.invocations] == [9, 0]  # 1 stage + 8 runs, then nothing
    assert f"Wall time {again.log.seconds / 60:.1f} min over 2 invocation(s)" in (out / "report.md").read_text()
    assert StudyLog.read(tmp_path / "published" / "study.json") == again.log
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["experiment", str(study)])  # as a user sees it: the arm's reason once, not once per run
    shown = capsys.readouterr()
    assert exit_info.value.code == 0 and "4 runs skipped:" in shown.out
    assert shown.out.count("is not cached and cannot be downloaded") == 1
    assert shown.err.count("is not cached and cannot be downloaded") == 1 and "skipped (as above)" in shown.err


def _check_published(published, result):
    """The record holds the small files only, and comparing its runs gives the report's tables again."""
    files = {str(p.relative_to(published)) for p in published.rglob("*") if p.is_file()}
    assert not [f for f in files if f.endswith(".pt") or "/data/" in f or f.startswith("tuning")]
    run = "runs/cxr-c-simplecnn-n5-seed0"
    for name in ("config.yaml", "train.json", "history.csv", "eval/test/metrics.json", "eval/test/predictions.csv"):
        assert f"{run}/{name}" in files
    assert {"study.yaml", "report.md", "study.json", "compare.csv", "stats.csv", "learning_curve_cxr.png"} <= files
    assert any(f.startswith("pretrain/") and f.endswith("history.csv") for f in files)
    assert not any(f.startswith("pretrain/") and f.endswith("train.json") for f in files)
    report = (published / "report.md").read_text()
    recorded = Comparison.read(published / "compare.json")
    assert recorded.runs[0]["run"].startswith(str(published / "runs"))
    again = compare_runs([published / "runs"], out=published.parent / "again", **recorded.options())
    assert results_tables(again) in report and headline_table(again).markdown(title=False) in report
    for table in ("compare.csv", "groups.csv", "stats.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(published / table), pd.read_csv(published.parent / "again" / table))
    assert pd.read_csv(published / "stats.csv").equals(pd.read_csv(result.study.out / "stats.csv"))
    assert {Path(figure).parent for figure in recorded.figures} == {published}


def test_publish_keeps_a_folder_that_is_not_a_published_study(study, tmp_path):
    (tmp_path / "published").mkdir()
    (tmp_path / "published" / "notes.txt").write_text("mine")
    values = yaml.safe_load(study.read_text())
    values.update(arms=values["arms"][:1], per_class=[5], seeds=[0])
    study.write_text(yaml.safe_dump(values))
    with pytest.raises(LowmedError, match="the folder exists and is not a published study"):
        run_experiment(study)
    assert (tmp_path / "published" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "study" / "runs").exists()  # refused before anything was trained


def test_compare_aggregates_seeds_and_reports_missing_evaluations(trained_run, tmp_path):
    with pytest.raises(LowmedError, match="no completed, evaluated runs"):
        compare_runs([trained_run], evaluate_missing=False, out=tmp_path, split="val")
    result = compare_runs([trained_run.parent], bootstrap=30, resamples=30, out=tmp_path)
    assert len(result.runs) == 1 and result.groups[0]["n"] == 1
    assert result.runs[0]["arm"] == "A scratch"
    for name in ("compare.csv", "compare.json", "compare.md", "stats.csv"):
        assert (tmp_path / name).is_file()


def test_a_run_left_out_of_a_comparison_is_recorded_with_why_and_moves_with_it(trained_run, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(trained_run, runs / "evaluated")
    shutil.copytree(trained_run, runs / "not-evaluated")
    shutil.rmtree(runs / "not-evaluated" / "eval", ignore_errors=True)
    compare_runs([runs / "evaluated"], bootstrap=0, resamples=10, out=tmp_path / "first")  # evaluates it
    compare_runs([runs], evaluate_missing=False, resamples=10, out=tmp_path / "cmp")
    (skipped,) = Comparison.read(tmp_path / "cmp" / "compare.json").skipped
    assert skipped.run == str(runs / "not-evaluated") and f"lowmed evaluate {skipped.run} --split" in skipped.reason
    moved = Comparison.read(tmp_path / "cmp" / "compare.json").relocated(str(tmp_path / "record"), str(tmp_path))
    assert moved.skipped[0].run == str(tmp_path / "record" / "not-evaluated")
    assert f"lowmed evaluate {moved.skipped[0].run} --split" in moved.skipped[0].reason


@pytest.mark.parametrize(
    "change, message",
    [
        ({"arms": []}, "arms must be a non-empty list"),
        ({"per_class": [0]}, "per_class sizes must be at least 1"),
        ({"train": {"epochs": -1}}, "--epochs -1: expected at least 1"),
        ({"color": "red"}, "unknown key\\(s\\) color"),
        ({"datasets": [{"name": "x"}]}, "needs a name and exactly one of data"),
        ({"out": "o", "publish": "o/results"}, "publish o/results and out o overlap"),
    ],
)
def test_bad_study_files_name_the_field(study, change, message):
    values = yaml.safe_load(study.read_text())
    values.update(change)
    study.write_text(yaml.safe_dump(values))
    with pytest.raises(LowmedError, match=message):
        load_study(study)


ROOT = Path(__file__).parent.parent


@pytest.mark.parametrize(
    "example",
    sorted(str(p.relative_to(ROOT)) for p in [*ROOT.glob("examples/*.yaml"), *ROOT.glob("benchmarks/*.yaml")]),
)
def test_every_example_study_plans(example, tmp_path, monkeypatch):
    """Each example (and benchmark) study checks and plans where its data and weights exist (here: empty folders
    and files of those names)."""
    path = ROOT / example
    monkeypatch.setenv("LOWMED_SHARED_DATA", str(tmp_path / "packs"))
    monkeypatch.chdir(tmp_path)
    study = yaml.safe_load(path.read_text())
    specs = study["datasets"] + [arm["pretrain"]["dataset"] for arm in study["arms"] if "pretrain" in arm]
    for spec in specs:
        if "data" in spec:
            Path(os.path.expandvars(spec["data"])).mkdir(parents=True, exist_ok=True)
    for options in [*study["arms"], *(arm["pretrain"] for arm in study["arms"] if "pretrain" in arm)]:
        weights = options.get("weights", "none")
        if weights not in ("none", "imagenet") and not weights.startswith("xrv:") and not Path(weights).exists():
            weights = Path(os.path.expandvars(weights))
            weights.parent.mkdir(parents=True, exist_ok=True)
            weights.touch()
    result = run_experiment(path, dry_run=True)
    assert result.runs and all(run.values["model"] for run in result.runs)
    assert {run.values["arm"] for run in result.runs} == {arm["name"] for arm in study["arms"]}


def test_seed_project_compare_models(trained_run, separable, tmp_path):
    train(TrainConfig(data=str(separable), epochs=2, seed=5, out=str(tmp_path / "other"), **FAST))
    comparison = compare_models(
        {"first": trained_run / "best.pt", "second": tmp_path / "other" / "best.pt"},
        separable,
        split="test",
        bootstrap=20,
    )
    assert set(comparison["metrics"]) == {"first", "second"} and "auroc" in comparison["ci95"]["first"]
    assert {row["test"] for row in comparison["tests"]} == {"DeLong", "McNemar"}
    assert all(0 <= row["p_holm"] <= 1 for row in comparison["tests"])


def test_a_run_that_did_not_learn_is_flagged_in_the_table_the_notes_and_the_conclusions(trained_run, tmp_path):
    import shutil

    from lowmed.experiment.report import _not_learned

    runs = tmp_path / "runs"
    for arm in ("A", "B"):
        copy = shutil.copytree(trained_run, runs / arm)
        summary = json.loads((copy / "train.json").read_text())
        (copy / "train.json").write_text(json.dumps({**summary, "arm": arm, "run_dir": str(copy)}))
    summary = json.loads((runs / "A" / "train.json").read_text())  # its checkpoint at chance
    summary["best"]["metrics"]["val_auroc"] = 0.5
    (runs / "A" / "train.json").write_text(json.dumps(summary))
    comparison = compare_runs([runs], bootstrap=20, resamples=20, baseline="A", out=tmp_path / "c")
    flags = {row["arm"]: row["not_learned"] for row in comparison.runs}
    epoch, best = summary["epochs_run"], summary["best"]["epoch"]
    assert (
        flags["B"] == ""
        and flags["A"] == f"did not learn: stopped at epoch {epoch}; its checkpoint (epoch {best}) has val AUROC 0.500"
    )
    assert "Did not learn (1 of 2 runs" in (tmp_path / "c" / "compare.md").read_text()
    warnings = list(_not_learned(comparison).values())
    assert warnings and "**Not an effect of pretraining:** 1 of the runs compared (A · simplecnn)" in warnings[0]


def test_a_running_study_publishes_its_record_marked_incomplete(study, tmp_path, monkeypatch):
    """With publish:, the record is published while the study runs (here after every run), its report saying how
    many runs it holds, so that a study stopped anywhere can be continued from it; study.json keeps one entry for the
    invocation, brought up to date each time."""
    values = yaml.safe_load(study.read_text())
    study.write_text(yaml.safe_dump({**values, "arms": values["arms"][:1], "per_class": [5]}))
    monkeypatch.setattr("lowmed.experiment.execute.PUBLISH_EVERY", timedelta(0))
    real_publish, reports = execute_module.publish_study, []

    def publishing(study, *args):
        reports.append((study.out / "report.md").read_text())
        return real_publish(study, *args)

    monkeypatch.setattr("lowmed.experiment.execute.publish_study", publishing)
    result = run_experiment(study)
    assert [run.status for run in result.runs] == ["trained", "trained"]
    assert len(reports) == 3  # after the first run, after the second, and at the end
    assert "**Incomplete: 1 of 2 runs.**" in reports[0] and "Incomplete" not in reports[-1]
    assert len(StudyLog.read(tmp_path / "published" / "study.json").invocations) == 1
