"""A study's shareable record (the study's ``publish:`` folder): the report and each run's small files, without
checkpoints or images, so that ``lowmed compare`` on it gives the report's tables again.

Layout: the study file as ``study.yaml``, ``report.md``, ``study.json``; the comparison (``compare.csv/.json/.md``,
``stats.csv``, learning curves), made by ``lowmed compare`` on the published runs themselves; ``runs/<run>/`` with
``config.yaml``, ``train.json``, ``history.csv``, ``tuning.json`` and ``eval/<split>/metrics.json`` +
``predictions.csv``; ``pretrain/<stage>/`` with the stage's ``config.yaml`` and ``history.csv`` (no ``train.json``:
a stage is no run of the comparison); ``subsets/<dataset>/*.yaml``, what each drawn subset holds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lowmed.compare import compare_runs
from lowmed.contracts import SUBSETS, Comparison, RunDir, StudyLog
from lowmed.errors import LowmedError
from lowmed.experiment.plan import PlannedRun
from lowmed.experiment.study import Study
from lowmed.io import staged_dir


def publish_study(study: Study, study_path: Path, pretrains: list[PlannedRun], runs: list[PlannedRun]) -> Comparison:
    """Replace ``study.publish`` with the study's record, then compare the published runs into it; returns that
    comparison."""
    target = study.publish
    check_publish_folder(target)
    with staged_dir(target) as staging:
        shutil.copy2(study_path, staging / "study.yaml")
        for name in ("report.md", StudyLog.FILE):
            shutil.copy2(study.out / name, staging / name)
        for run in runs:
            if run.status in ("trained", "done before"):
                _copy_run(RunDir(run.run_dir), RunDir(staging / "runs" / run.run_dir.name), study.split)
        for stage in pretrains:
            source, copy = RunDir(stage.run_dir), RunDir(staging / "pretrain" / stage.run_dir.name)
            _copy(source.config, copy.config)
            _copy(source.history, copy.history)
        for sidecar in sorted((study.out / SUBSETS).glob("*/*.yaml")):
            _copy(sidecar, staging / SUBSETS / sidecar.parent.name / sidecar.name)
    return compare_runs([target / "runs"], split=study.split, out=target, quiet=True, **study.compare)


def check_publish_folder(target: Path) -> None:
    """A publish folder is new or an earlier record of a study, which is replaced; anything else is kept."""
    if target.exists() and not (target / StudyLog.FILE).is_file():
        raise LowmedError(
            f"publish {target}: the folder exists and is not a published study (no {StudyLog.FILE}); "
            "remove it or publish elsewhere"
        )


def _copy_run(source: RunDir, copy: RunDir, split: str) -> None:
    for path, to in ((source.config, copy.config), (source.summary, copy.summary), (source.history, copy.history)):
        _copy(path, to)
    if source.tuning.is_file():
        _copy(source.tuning, copy.tuning)
    evaluation, evaluation_copy = source.evaluation(split), copy.evaluation(split)
    _copy(evaluation.metrics, evaluation_copy.metrics)
    _copy(evaluation.predictions, evaluation_copy.predictions)


def _copy(path: Path, to: Path) -> None:
    to.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, to)
