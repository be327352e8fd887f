"""A study's shareable record (the study's ``publish:`` folder): the report and each run's small files, without
checkpoints, images or any absolute path of the machine that made them, so that ``lowmed compare`` on it gives
the report's tables again, and a study run again on another machine continues from it.

Layout: the study file as ``study.yaml``, ``report.md``, ``study.json``, ``families.json`` (the planned families
of tests) and the report's figures; the comparison (``compare.csv/.json/.md``, ``groups.csv``, ``stats.csv``,
learning curves): the study's own, of its finished runs, with the published runs in their place, which is what
``lowmed compare`` on the published runs makes again; ``runs/<run>/`` with ``config.yaml``, ``train.json``,
``history.csv``, ``tuning.json`` and ``eval/<split>/metrics.json`` + ``predictions.csv`` (image paths relative
to the dataset's source folder); ``pretrain/<stage>/`` with the stage's ``config.yaml``, ``history.csv``, its
train.json as ``stage.json`` (a stage is no run of the comparison) and, for a self-supervised stage,
``pretrain.json``; ``subsets/<dataset>/*.yaml``, what each drawn subset holds. Paths are written against the
study's anchors (``lowmed.experiment.portable``).

Restoring is the other way: a run of the plan that this machine's ``out:`` lacks but the record holds, finished
and evaluated, is copied in with this machine's paths (after checking that it trained on the same data, subset
and weights) and counts as done; so are the tuning cells and pretrain stages whose runs are all there.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import yaml

from lowmed.comparison.compare import write_comparison
from lowmed.config import TrainConfig
from lowmed.contracts import (
    Comparison,
    ComparisonDir,
    EvalReport,
    RunDir,
    StudyDir,
    StudyLog,
    TestFamilies,
    TrainSummary,
    TuningRecord,
)
from lowmed.data.manifest import read_info
from lowmed.errors import LowmedError
from lowmed.experiment.plan import PlannedPretraining, PlannedRun, PlannedTuning, differences_from_plan
from lowmed.experiment.portable import PortablePaths
from lowmed.experiment.study import Study
from lowmed.io import sha256_file, staged_dir, write_csv, write_json, write_text, write_yaml
from lowmed.tuning import cell_space

log = logging.getLogger(__name__)

STAGE_RECORD = "stage.json"  # a pretrain stage's train.json, in a published record
# the options of a run that name files of the machine it ran on: a restored run takes this machine's (planned) ones
_PATH_OPTIONS = ("data", "subset", "out")


def publish_study(
    study: Study,
    study_path: Path,
    pretrains: list[PlannedPretraining],
    runs: list[PlannedRun],
    comparison: Comparison,
    figures: list[Path],
) -> Comparison:
    """Replace ``study.publish`` with the study's record: its files, and ``comparison`` (of the study's finished
    runs) as the comparison of the published runs; returns that comparison."""
    target = study.publish
    assert target is not None  # a study with publish:
    check_publish_folder(target)
    portable = PortablePaths.for_study(study.variables)
    record_folder = Path(portable.text(str(target.absolute())))  # as the record names its own files
    published = comparison.relocated(runs=str(StudyDir(record_folder).runs), out=str(record_folder))
    with staged_dir(target) as staging:
        record = StudyDir(staging)
        write_comparison(published, ComparisonDir(staging), power=bool(study.compare.get("power")))
        shutil.copy2(study_path, record.study_file)
        write_text(record.report, portable.text(study.folder.report.read_text(encoding="utf-8")))
        _copy_json(study.out / StudyLog.FILE, staging / StudyLog.FILE, portable)
        shutil.copy2(study.out / TestFamilies.FILE, staging / TestFamilies.FILE)
        for figure in [*figures, *map(Path, comparison.figures)]:
            shutil.copy2(figure, staging / figure.name)
        for run in runs:
            if run.status in ("trained", "done before"):
                _publish_run(RunDir(run.run_dir), RunDir(record.run(run.run_dir.name)), study.split, portable)
        for stage in pretrains:
            source, copy = RunDir(stage.run_dir), RunDir(record.pretrain_stage(stage.run_dir.name))
            if source.config.is_file():
                _copy_yaml(source.config, copy.config, portable)
                shutil.copy2(source.history, _folder(copy.history))
                if source.summary.is_file():
                    _copy_json(source.summary, copy.path / STAGE_RECORD, portable)
                if source.self_supervised.is_file():
                    _copy_json(source.self_supervised, copy.self_supervised, portable)
        for sidecar in sorted(study.folder.subsets.glob("*/*.yaml")):
            _copy_yaml(sidecar, _folder(record.subsets / sidecar.parent.name / sidecar.name), portable)
    return published


def check_publish_folder(target: Path) -> None:
    """A publish folder is new or an earlier record of a study, which is replaced; anything else is kept."""
    if target.exists() and not (target / StudyLog.FILE).is_file():
        raise LowmedError(
            f"publish {target}: the folder exists and is not a published study (no {StudyLog.FILE}); "
            "remove it or publish elsewhere"
        )


def _folder(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _copy_json(path: Path, to: Path, portable: PortablePaths) -> None:
    write_json(_folder(to), portable.data(json.loads(path.read_text(encoding="utf-8"))))


def _copy_yaml(path: Path, to: Path, portable: PortablePaths) -> None:
    write_yaml(_folder(to), portable.data(yaml.safe_load(path.read_text(encoding="utf-8"))))


def _publish_run(source: RunDir, copy: RunDir, split: str, portable: PortablePaths) -> None:
    _copy_yaml(source.config, copy.config, portable)
    _copy_json(source.summary, copy.summary, portable)
    shutil.copy2(source.history, _folder(copy.history))
    if source.tuning.is_file():
        _copy_json(source.tuning, copy.tuning, portable)
    evaluation, evaluation_copy = source.evaluation(split), copy.evaluation(split)
    _copy_json(evaluation.metrics, evaluation_copy.metrics, portable)
    report = evaluation.read_report()
    root = read_info(report.dataset["prepared_dir"]).source_path
    predictions = pd.read_csv(evaluation.predictions)
    predictions["path"] = [_below(path, root, portable) for path in predictions["path"]]
    write_csv(evaluation_copy.predictions, predictions)


def _below(path: str, root: str | None, portable: PortablePaths) -> str:
    """An image's path relative to its dataset's source folder (else written against the study's anchors)."""
    if root is not None and Path(path).is_absolute():
        try:
            return Path(path).relative_to(root).as_posix()
        except ValueError:
            pass
    return portable.text(path)


def restore_published(
    study: Study,
    study_path: Path,
    pretrains: list[PlannedPretraining],
    cells: list[PlannedTuning],
    runs: list[PlannedRun],
) -> list[str]:
    """Copy into ``study.out`` every planned run it lacks that the published record holds finished and evaluated,
    then the tuning records and pretrain stages those runs complete; returns the runs restored."""
    record = study.publish
    if record is None or not (record / StudyLog.FILE).is_file():
        return []
    portable = PortablePaths.for_study(study.variables)
    restored, otherwise = [], []
    stage_names: dict[str, set[str]] = {}  # a planned stage -> the stage folders its published runs name
    for job, source, differences in _held_in_record(study, runs, portable):
        if differences:  # an earlier version of the study (another image size, say): trained again
            otherwise.append((job.name, differences))
            continue
        published_weights = _restore_run(source, job, study.split, portable, record)
        restored.append(job.name)
        if job.pretraining is not None:
            stage_names.setdefault(job.pretraining.name, set()).add(Path(published_weights).name)
    study_log = study.out / StudyLog.FILE
    if restored and not study_log.exists():  # the invocations that made the runs taken count in its wall time
        write_json(_folder(study_log), _local_json(record / StudyLog.FILE, portable))
    if otherwise:
        name, differences = otherwise[0]
        log.warning(
            f"{len(otherwise)} run(s) of the published record {record} were trained under other options than the "
            f"study now plans (e.g. {name}: {', '.join(differences[:2])}); they are trained again, and the record "
            "is replaced once the study publishes"
        )
    for planned in cells:
        _restore_cell(planned, study, runs)
    for stage in pretrains:
        users = [run for run in runs if run.pretraining is stage]
        names = stage_names.get(stage.name, set())
        if (
            stage.run_dir.exists()
            or len(names) != 1
            or not all(RunDir(r.run_dir).state() == "completed" for r in users)
        ):
            continue
        published = RunDir(StudyDir(record).pretrain_stage(names.pop()))
        if published.config.is_file():  # a record written before stages kept their train.json has no stage.json
            with staged_dir(stage.run_dir) as staging:
                paths = (*_PATH_OPTIONS, "weights", "init", "target")
                planned_paths = {name: stage.values[name] for name in paths if name in stage.values}
                _write_local_yaml(published.config, RunDir(staging).config, portable, planned_paths)
                shutil.copy2(published.history, staging / published.history.name)
                if (published.path / STAGE_RECORD).is_file():
                    summary = _local_json(published.path / STAGE_RECORD, portable)
                    write_json(RunDir(staging).summary, summary | {"run_dir": str(stage.run_dir)})
                if published.self_supervised.is_file():
                    write_json(RunDir(staging).self_supervised, _local_json(published.self_supervised, portable))
    return restored


def published_runs(study: Study, runs: list[PlannedRun]) -> list[str]:
    """The planned runs that ``restore_published`` would take as done, by name (it also checks that they trained
    on the same prepared data, subset and weights, which needs the data prepared)."""
    record = study.publish
    if record is None or not (record / StudyLog.FILE).is_file():
        return []
    portable = PortablePaths.for_study(study.variables)
    return [job.name for job, _, differences in _held_in_record(study, runs, portable) if not differences]


def _held_in_record(
    study: Study, runs: list[PlannedRun], portable: PortablePaths
) -> Iterator[tuple[PlannedRun, RunDir, list[str]]]:
    """Each planned run this machine's ``out:`` lacks that the published record holds finished and evaluated, with
    its published copy and how its options differ from the plan (none: the same run)."""
    assert study.publish is not None
    for job in runs:
        source = RunDir(StudyDir(study.publish).run(job.run_dir.name))
        if job.run_dir.exists() or not source.summary.is_file() or not source.evaluation(study.split).exists():
            continue
        if TrainSummary.read(source.summary).completed:
            yield job, source, _trained_otherwise(source, job, study, portable)


def _trained_otherwise(source: RunDir, job: PlannedRun, study: Study, portable: PortablePaths) -> list[str]:
    """How a published run's options differ from what the study plans for it (its files by the planned paths; a
    tuned run's tuned options by its cell's record, so not compared here)."""
    values = portable.local_data(yaml.safe_load(source.config.read_text(encoding="utf-8")))
    stage = Path(str(values.get("weights"))).name  # a pretrain stage's folder: its name holds its options' digest
    values |= {name: job.values[name] for name in _PATH_OPTIONS if name in job.values}
    if _is_path(str(job.values.get("weights", "none"))):
        values["weights"] = job.values["weights"]
    tuned = {param.name for param in study.tune.space} | {"monitor"} if study.tune and job.tuning else set()
    planned = {name: value for name, value in job.values.items() if name not in tuned}
    differences = differences_from_plan(TrainConfig.from_dict(values, str(source.config)), planned, str(source.path))
    if job.pretraining is not None and stage != job.pretraining.name:
        differences.append(f"pretrain stage {stage} (now {job.pretraining.name})")
    return differences


def _restore_run(source: RunDir, job: PlannedRun, split: str, portable: PortablePaths, record: Path) -> str:
    """One published run into ``job.run_dir``, with this machine's paths, once it is known to be the same run;
    returns the weights it names in the record (a pretrain stage's folder, there)."""
    summary = _local_json(source.summary, portable)
    info = read_info(job.values["data"])
    where = f"{source.path} (the published record {record})"
    if summary["dataset"].get("manifest_sha256") != info.manifest_sha256:
        raise LowmedError(
            f"{where} was trained on another version of {job.dataset} (prepared manifest "
            f"{summary['dataset'].get('manifest_sha256')}, here {info.manifest_sha256}); prepare the same data, or "
            "give the study a new publish: folder"
        )
    subset = Path(job.values["subset"])
    if summary["dataset"].get("subset_sha256") not in (None, sha256_file(subset)):
        raise LowmedError(f"{where} was trained on another subset than {subset}; draw it again from the same data")
    weights = job.values.get("weights", "none")
    if Path(str(weights)).is_file() and summary["weights"].get("sha256") != sha256_file(weights):
        raise LowmedError(f"{where} was trained from other weights than {weights} (SHA-256 differs)")
    planned = {name: job.values[name] for name in _PATH_OPTIONS if name in job.values}
    published_weights = str(yaml.safe_load(source.config.read_text(encoding="utf-8")).get("weights"))
    if _is_path(str(weights)):  # a file (its SHA-256 checked above) or a pretrain stage's folder
        planned["weights"] = str(weights)
    with staged_dir(job.run_dir) as staging:
        copy = RunDir(staging)
        _write_local_yaml(source.config, copy.config, portable, planned)
        summary["run_dir"] = str(job.run_dir)
        summary["dataset"] |= {"prepared_dir": str(Path(job.values["data"]).resolve()), "subset": str(subset)}
        if "weights" in planned:
            summary["weights"]["path"] = str(Path(planned["weights"]).resolve())
        write_json(copy.summary, summary)
        shutil.copy2(source.history, copy.history)
        if source.tuning.is_file():
            tuning = _local_json(source.tuning, portable)
            if job.tuning is not None and job.tuning.cell.storage:
                tuning["storage"] = job.tuning.cell.storage  # where this machine keeps the cell's trials
            write_json(copy.tuning, tuning)
        evaluation, restored = source.evaluation(split), copy.evaluation(split)
        metrics = _local_json(evaluation.metrics, portable)
        metrics["dataset"] = {**metrics.get("dataset", {}), "prepared_dir": str(Path(job.values["data"]).resolve())}
        write_json(_folder(restored.metrics), metrics)
        predictions = pd.read_csv(evaluation.predictions)
        root = Path(info.source_path or ".")
        predictions["path"] = [
            portable.local(path) if Path(portable.local(path)).is_absolute() else str(root / path)
            for path in predictions["path"]
        ]
        write_csv(restored.predictions, predictions)
    EvalReport.read(job.run_dir / restored.metrics.relative_to(staging))  # what was written reads back
    return published_weights


def _is_path(weights: str) -> bool:
    return weights not in ("none", "auto", "imagenet") and not weights.startswith("xrv:")


def _restore_cell(planned: PlannedTuning, study: Study, runs: list[PlannedRun]) -> None:
    """A tuning cell's record, from a finished run of it that carries a copy: its trials ran on the machine that
    published it, and the cell's other runs (more seeds, say) take the values it chose there, under this machine's
    name for the same cell."""
    cell = planned.cell
    if cell.record_path.is_file() or study.tune is None:
        return
    members = [RunDir(run.run_dir) for run in runs if run.tuning is planned]
    copies = [run.tuning for run in members if run.state() == "completed" and run.tuning.is_file()]
    if not copies:
        return
    record = TuningRecord.read(copies[0])
    space = json.loads(json.dumps({p.name: p.as_given() for p in cell_space(study.tune, cell.base)}))
    same = (record.cell, record.budget, record.metric, record.space) == (
        cell.name,
        study.tune.trials,
        study.tune.metric,
        space,
    )
    if same:
        record.optuna_study = cell.optuna_study(study.tune)
        record.storage = cell.storage or record.storage
        record.write(_folder(cell.record_path))


def _local_json(path: Path, portable: PortablePaths) -> dict:
    return portable.local_data(json.loads(path.read_text(encoding="utf-8")))


def _write_local_yaml(path: Path, to: Path, portable: PortablePaths, planned: dict) -> None:
    values = portable.local_data(yaml.safe_load(path.read_text(encoding="utf-8")))
    write_yaml(_folder(to), {**values, **planned})
