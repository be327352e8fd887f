"""Running a study: pretrain stages, then tuning cells, then each planned run trained (or resumed) and evaluated,
under torchrun shared out by claims.

Finished runs are skipped, interrupted ones resumed, failed ones retried once; one failure never stops the others;
an arm whose weights cannot be had is reported as skipped, with the reason. A tuning cell resumes with its finished
trials kept; its runs take its chosen values and get a copy of its ``tuning.json``. Under ``torchrun`` the pretrain
stages train data-parallel across all processes, and each process then takes the next unclaimed tuning cell, and
after all cells the grid's next unclaimed run, and trains it alone on its own GPU; rank 0 prepares the data, draws
the subsets, and writes the comparison and the report once every process has finished.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from lowmed.comparison.compare import compare_runs, planned_power
from lowmed.comparison.render import metric_label
from lowmed.comparison.statistics import PowerPlan
from lowmed.config import ConfigFile, PretrainConfig, TrainConfig
from lowmed.console import nested, progress_bar
from lowmed.contracts import DATASET_INFO, PRIMARY, Comparison, RunDir, StudyLog, TestFamilies, TuningRecord, slug
from lowmed.data.manifest import read_info
from lowmed.distributed import Distributed
from lowmed.errors import Interrupted, LowmedError, RunFailed
from lowmed.evaluation.evaluate import evaluate
from lowmed.experiment.checklist import ReportInputs, draw_figures
from lowmed.experiment.plan import (
    PlannedJob,
    PlannedPretraining,
    PlannedRun,
    PlannedTuning,
    differences_from_plan,
    external_sets,
    plan,
    prepare_study_data,
    study_families,
)
from lowmed.experiment.portable import PortablePaths
from lowmed.experiment.publish import check_publish_folder, publish_study, published_runs, restore_published
from lowmed.experiment.report import study_report
from lowmed.experiment.study import Study, load_study
from lowmed.interrupts import stop_asked
from lowmed.io import check_writable, write_text
from lowmed.tracking import Tracker, open_tracker
from lowmed.training.train import resume_run, train
from lowmed.tuning import finished_record, tune_cell, tuned_options

log = logging.getLogger(__name__)

# under torchrun, a process that has finished its share of the grid waits this long for the slowest one
GRID_WAIT = timedelta(hours=24)
# with publish:, how often the record is published while the study runs (after a run finishes, not in between)
PUBLISH_EVERY = timedelta(minutes=15)


@dataclass
class StudyResult:
    """What ``run_experiment`` returns: the study, its pretrain stages and runs with their outcomes, the comparison
    and the report (``report`` is None for a dry run, and in torchrun's other processes)."""

    study: Study
    pretrain: list[PlannedPretraining]
    runs: list[PlannedRun]
    cells: list[PlannedTuning] = field(default_factory=list)
    comparison: Comparison | None = None
    report: str | None = None
    wall_seconds: float = 0.0
    log: StudyLog | None = None  # every invocation so far, this one included
    external: dict[str, Comparison] = field(default_factory=dict)  # per external test set: the paired tests on it
    published: Path | None = None  # the study's publish folder, once written
    power: PowerPlan | None = None  # the smallest difference the primary test can detect at the planned seeds
    restored: list[str] = field(default_factory=list)  # runs taken from the published record (dry run: held)


def _execute(
    job: PlannedJob, study: Study, skip_reasons: dict[str, str], dist: Distributed, needed: bool = True
) -> None:
    """Train (or resume) one run across ``dist``'s processes and evaluate it; record what happened in
    ``job.status``. A pretrain stage no unfinished run needs (``needed`` False) is not trained.

    An input error (say, ImageNet weights that cannot be downloaded) skips the rest of its arm too. A crash is
    retried once from scratch, except in a run shared by several processes: they cannot retry in step after one
    of them crashed alone, so the study stops there (run it again to resume).
    """
    grid_run = job if isinstance(job, PlannedRun) else None  # else a pretraining
    if grid_run is not None and grid_run.arm.name in skip_reasons:
        job.status, job.detail = "skipped", skip_reasons[grid_run.arm.name]
        return
    tuning = None
    if grid_run is not None and grid_run.tuning is not None:
        tuning = grid_run.tuning.cell.record or _read_record(grid_run.tuning)
        if tuning is None:
            job.status, job.detail = "skipped", f"tuning cell {grid_run.tuning.name} did not finish"
            return
        job.values = {**job.values, **tuned_options(tuning)}
    run = RunDir(job.run_dir)
    state = dist.share(run.state())  # rank 0's reading, before any rank writes there
    if grid_run is None and not needed:
        job.status, job.detail = ("done before", "") if state == "completed" else ("not needed", "its runs are done")
        return
    if grid_run is None and state == "completed" and not run.best.is_file():
        state = "new"  # a stage restored from a published record, without its checkpoint, that a new run needs
    if tuning is not None and state in ("completed", "resumable"):  # its cell's chosen values, now known
        _check_as_planned(run, job.values)
    if state == "completed":
        job.status = "done before"
    else:
        for attempt in (1, 2):
            try:
                if (
                    isinstance(job, PlannedPretraining) and job.self_supervised
                ):  # one process: a pretraining on unlabelled images is not data-parallel
                    _pretrain(job, resume=state == "resumable" and attempt == 1)
                elif state == "resumable" and attempt == 1:
                    resume_run(job.run_dir, dist=dist)
                else:
                    train(TrainConfig.from_dict(job.values, source=job.name), overwrite=True, dist=dist)
                job.status, job.detail = "trained", f"on the second try, after {job.detail}" if attempt == 2 else ""
                break
            except Interrupted:
                raise
            except LowmedError as exc:
                job.status, job.detail = "skipped", str(exc)
                if grid_run is not None:
                    skip_reasons[grid_run.arm.name] = str(exc)
                return
            except Exception as exc:  # a failure during the run: once more, from scratch
                if dist.enabled:
                    raise RunFailed(
                        f"{job.name} failed in process {dist.rank}: {type(exc).__name__}: {exc}; "
                        "run the same command again to resume the study"
                    ) from exc
                job.status, job.detail = "failed", f"{type(exc).__name__}: {exc}"
        if job.status == "failed":
            return
    if tuning is not None and not run.tuning.is_file():
        tuning.write(run.tuning)
    if grid_run is not None and not run.evaluation(study.split).exists():
        evaluate(job.run_dir, **study.evaluate)
    for external in external_sets(study, job.dataset).values() if grid_run is not None else ():
        if not run.evaluation("test", external.root.name).exists():
            evaluate(job.run_dir, data=external.root, **{**study.evaluate, "split": "test"})


def _pretrain(job: PlannedPretraining, resume: bool) -> None:
    from lowmed.training.selfsupervised import pretrain, resume_pretraining

    if resume:
        resume_pretraining(job.run_dir)
    else:
        pretrain(PretrainConfig.from_dict(job.values, source=job.name), overwrite=True)


def _check_as_planned(run: RunDir, planned: dict, options: type[ConfigFile] = TrainConfig) -> None:
    """Refuse to report (or resume) a run under options it was not trained with: the study file changed since it
    ran (an epoch count, a learning rate, the values a tuning cell chose, the weights of a pretrain stage).
    ``options``: the run's kind of config (a self-supervised stage's is a PretrainConfig)."""
    differences = differences_from_plan(options.from_yaml(run.config), planned, str(run.path))
    if differences:
        raise LowmedError(
            f"{run.path} was trained with {', '.join(differences[:3])}"
            + (f" and {len(differences) - 3} more" if len(differences) > 3 else "")
            + "; the study file changed since: put its values back, give the study a new out:, or delete that run "
            "dir to train it again"
        )


def _read_record(planned: PlannedTuning) -> TuningRecord | None:
    """A cell's ``tuning.json``, if it has been tuned (by an earlier invocation, or another torchrun process)."""
    path = planned.cell.record_path
    return TuningRecord.read(path) if path.is_file() else None


def _tune(planned: PlannedTuning, study: Study, skip_reasons: dict[str, str], show) -> None:
    """Tune one cell (or find it tuned); an arm whose cell cannot be tuned is skipped with the reason."""
    if planned.arm.name in skip_reasons:
        planned.status, planned.detail = "skipped", skip_reasons[planned.arm.name]
        return
    assert study.tune is not None  # a study without tune: plans no cell
    before = _read_record(planned)
    try:
        with nested(log):  # the study's bar and lines show the cell's progress
            record = tune_cell(planned.cell, study.tune, on_trial=show)
    except Interrupted:
        raise
    except (LowmedError, RunFailed) as exc:
        planned.status, planned.detail = "skipped", f"tuning failed: {exc}"
        skip_reasons[planned.arm.name] = planned.detail
        return
    planned.cell.record = record
    counted = record.counted
    pruned = sum(t.state == "pruned" for t in counted)
    planned.status = "done before" if record == before else "tuned"
    planned.detail = (
        f"{len(counted)} trials ({pruned} pruned); {record.metric} {record.best_value:.4f}; {record.recipe()}"
    )


def _claim(path: Path) -> bool:
    """True for the one process that creates ``path`` first (an atomic create, also on a shared filesystem), so
    a process that finishes early takes the next run instead of idling behind a fixed share."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


@dataclass
class _Session:
    """One invocation of a study: what it planned, and how far it has got."""

    study: Study
    study_path: Path
    dist: Distributed
    pretrains: list[PlannedPretraining]
    cells: list[PlannedTuning]
    runs: list[PlannedRun]
    families: TestFamilies
    restored: list[str]
    started: float = field(default_factory=time.perf_counter)
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    log_entry: int | None = None  # this invocation's place in study.json, once written
    published_at: float = field(default_factory=time.monotonic)
    tracker: Tracker | None = None  # the study's track: store, opened before anything trains

    @property
    def claims(self) -> Path:
        return self.study.folder.claims


def run_experiment(study_path: str | os.PathLike, *, dry_run: bool = False) -> StudyResult:
    """Run (or resume) the whole study and write ``report.md``; with ``dry_run`` only plan it.

    Under torchrun every process returns the runs' outcomes; only rank 0's result names the report. With
    ``publish:`` the record is also published every ``PUBLISH_EVERY`` while the study runs, marked incomplete, so
    that a study stopped for any reason can be continued from it on another machine.
    """
    study = load_study(study_path)
    if dry_run:
        pretrains, cells, runs = plan(study)
        held = _preview(study, pretrains, cells, runs)
        records = [study.out / Comparison.FILE, *([study.publish / Comparison.FILE] if study.publish else [])]
        earlier = next((Comparison.read(record) for record in records if record.is_file()), None)
        power = _power(study, earlier, study_families(study, runs))
        return StudyResult(study, pretrains, runs, cells, power=power, restored=held)
    session = _initialise(study, Path(study_path))
    try:
        own_runs = _run(session)
    except (Interrupted, KeyboardInterrupt):  # Ctrl-C anywhere: the study goes on from where it stopped
        raise Interrupted(
            f"study {study.name} stopped; its finished runs and trials are kept; continue it with: "
            f"lowmed experiment {study_path}"
        ) from None
    if session.dist.enabled:  # every process's outcomes, on every process (waiting for the slowest)
        outcomes = {
            name: (status, detail)
            for share in session.dist.gather_objects([(r.name, r.status, r.detail) for r in own_runs])
            for name, status, detail in share
        }
        for run in session.runs:
            run.status, run.detail = outcomes[run.name]
        if session.dist.is_main:
            shutil.rmtree(session.claims, ignore_errors=True)
    if not session.dist.is_main:
        return StudyResult(study, session.pretrains, session.runs, session.cells, restored=session.restored)
    return _finalise(session)


def _preview(
    study: Study, pretrains: list[PlannedPretraining], cells: list[PlannedTuning], runs: list[PlannedRun]
) -> list[str]:
    """A dry run's statuses: what an invocation now would find done, in ``out:`` or in the published record (taken
    as done there once its data are checked), and so not train; returns the runs the record holds."""
    held = published_runs(study, runs)
    for run in runs:
        if RunDir(run.run_dir).state() == "completed":
            run.status = "done before"
        elif run.name in held:
            run.status, run.detail = "done before", "in the published record"
    for cell in cells:
        members = [run for run in runs if run.tuning is cell]
        if study.tune is not None and finished_record(cell.cell, study.tune) is not None:
            cell.status = "done before"
        elif any(run.name in held for run in members):  # its record travels with its runs
            cell.status, cell.detail = "done before", "in the published record"
    for stage in pretrains:
        users = [run for run in runs if run.pretraining is stage]
        if RunDir(stage.run_dir).state() == "completed":
            stage.status = "done before"
        elif users and all(run.status == "done before" for run in users):  # restored with them, or not needed
            in_record = any(run.name in held for run in users)
            stage.status, stage.detail = (
                ("done before", "in the published record") if in_record else ("not needed", "its runs are done")
            )
    return held


def _initialise(study: Study, study_path: Path) -> _Session:
    """Check the outputs, plan the study (rank 0 prepares the data, draws the subsets, restores published runs and
    fixes the families of tests), and refuse any finished run the study file no longer describes."""
    if study.publish is not None:
        check_publish_folder(study.publish)  # before hours of training, not after
    check_writable(study.folder.report, f"{study_path}: out:")
    dist = Distributed.from_environment(str(study.train.get("device", "auto")), timeout=GRID_WAIT)
    tracker = open_tracker(study.track) if dist.is_main else None
    planned: list[tuple[list[PlannedPretraining], list[PlannedTuning], list[PlannedRun], list[str]]] = []

    def prepare_study() -> None:
        shutil.rmtree(study.folder.claims, ignore_errors=True)  # left by an invocation that was stopped
        prepare_study_data(study)
        pretrains, cells, runs = plan(study)
        restored = restore_published(study, study_path, pretrains, cells, runs)
        study_families(study, runs).write(study.out / TestFamilies.FILE)  # fixed before any run trains
        planned.append((pretrains, cells, runs, restored))

    dist.on_main(prepare_study)
    pretrains, cells, runs, restored = planned[0] if planned else (*plan(study), [])
    families = TestFamilies.read(study.out / TestFamilies.FILE)
    tuned = {param.name for param in study.tune.space} | {"monitor"} if study.tune else set()
    for job in [*pretrains, *runs]:  # before anything trains (a tuned run's chosen values: once its cell is tuned)
        done = RunDir(job.run_dir)
        if done.state() in ("completed", "resumable"):
            self_supervised = isinstance(job, PlannedPretraining) and job.self_supervised
            tuned_here = tuned if isinstance(job, PlannedRun) and job.tuning is not None else set()
            values = {k: v for k, v in job.values.items() if k not in tuned_here}
            _check_as_planned(done, values, PretrainConfig if self_supervised else TrainConfig)
    return _Session(study, study_path, dist, pretrains, cells, runs, families, restored, tracker=tracker)


def _run(session: _Session) -> list[PlannedRun]:
    """Every job in order (``_job_order``), the record published now and then; returns the grid runs
    this process trained (under torchrun, each process its own)."""
    study, dist, runs = session.study, session.dist, session.runs
    alone = Distributed()  # a grid run is small: each process trains its own, on its own GPU
    own_runs: list[PlannedRun] = []
    said: set[tuple[str, str]] = set()  # outcomes whose reason was shown: an arm's skip reason once, not per run
    skip_reasons: dict[str, str] = {}
    jobs = _job_order(session)
    prefix = f"[process {dist.rank}] " if dist.world_size > 1 else ""
    with progress_bar(transient=False, disable=not dist.is_main) as bar:
        task = bar.add_task(f"study {study.name}", total=len(jobs), status="")
        for index, job in enumerate(jobs, start=1):
            if stop_asked():  # Ctrl-C after the last batch of the job before: stop here
                raise Interrupted("stopped")
            if dist.enabled and runs and job is runs[0]:
                dist.barrier()  # every cell is tuned before any run takes its values
            if isinstance(job, PlannedRun) and dist.world_size > 1 and not _claim(session.claims / job.name):
                bar.advance(task)  # another process has it
                continue
            bar.update(task, status=f"{job.name}")
            if isinstance(job, PlannedTuning):
                _tune(job, study, skip_reasons, lambda line: log.info(prefix + line))
            elif isinstance(job, PlannedPretraining):
                users = [run for run in runs if run.pretraining is job]
                needed = any(RunDir(run.run_dir).state() != "completed" for run in users)
                with nested(log):  # the study's bar and lines show the job's progress
                    _execute(job, study, skip_reasons, dist, needed)
                if job.status in ("failed", "skipped"):
                    for run in users:  # the arm that needed this pretraining cannot run
                        skip_reasons[run.arm.name] = f"pretrain stage {job.name} {job.status}: {job.detail}"
            elif isinstance(job, PlannedRun):
                with nested(log):
                    _execute(job, study, skip_reasons, alone)
                own_runs.append(job)
                if session.tracker is not None and job.status in ("trained", "done before"):
                    session.tracker.log_run(job.run_dir)
            detail = f" — {job.detail}" if job.detail else ""
            if job.detail and (job.status, job.detail) in said:
                detail = " (as above)"
            said.add((job.status, job.detail))
            log.info(f"{prefix}[{index}/{len(jobs)}] {job.name}: {job.status}{detail}")
            bar.advance(task)
            due = time.monotonic() - session.published_at >= PUBLISH_EVERY.total_seconds()
            if study.publish is not None and not dist.enabled and job.status == "trained" and due:
                _finalise(session)  # the record so far, marked incomplete
    return own_runs


def _job_order(session: _Session) -> list[PlannedJob | PlannedTuning]:
    """The pretrainings, then each tuning cell followed by the runs that take its values, so that a study stopped
    early holds finished runs of every cell tuned so far (and publishes them). Under torchrun every cell comes first:
    the processes wait for all of them at one barrier before the grid."""
    if session.dist.enabled:
        return [*session.pretrains, *session.cells, *session.runs]
    ordered: list[PlannedJob | PlannedTuning] = [*session.pretrains]
    for cell in session.cells:
        ordered += [cell, *(run for run in session.runs if run.tuning is cell)]
    return ordered + [run for run in session.runs if run.tuning is None]


def _finalise(session: _Session) -> StudyResult:
    """Compare the finished runs, write the report (marked incomplete while runs are missing) and study.json (this
    invocation's entry updated in place), and publish the record."""
    with nested(log):  # comparing and publishing show no bars or lines of their own
        study, pretrains, cells, runs = session.study, session.pretrains, session.cells, session.runs
        result = StudyResult(study, pretrains, runs, cells, restored=session.restored)
        finished = [r for r in runs if r.status in ("trained", "done before")]
        figures: dict[str, Path] = {}
        if finished:
            result.comparison = compare_runs(
                [r.run_dir for r in finished],
                split=study.split,
                out=study.out,
                families=session.families,
                **study.compare,
            )
            result.external = _external_comparisons(study, finished, session.families)
            figures = draw_figures(result.comparison, study.out)
        result.power = _power(study, result.comparison, session.families)
        result.wall_seconds = time.perf_counter() - session.started
        result.log = _logged(session, result.wall_seconds, pretrains + cells + runs)
        report = study.folder.report
        inputs = ReportInputs(PortablePaths.for_study(study.variables), result.power, figures)
        text = study_report(
            study, pretrains, runs, result.comparison, result.log, inputs, cells=cells, external=result.external
        )
        write_text(report, text)
        result.report = str(report)
        if session.tracker is not None:
            written = study.folder.tables
            tables = [report, written.table, written.markdown, written.record, written.groups]
            session.tracker.log_study(study.name, study.out, tables + list(figures.values()))
        if study.publish is not None and result.comparison is not None:
            publish_study(study, session.study_path, pretrains, runs, result.comparison, list(figures.values()))
            result.published = study.publish
            session.published_at = time.monotonic()
        return result


def _power(study: Study, comparison: Comparison | None, families: TestFamilies) -> PowerPlan:
    """The primary test's minimum detectable difference at the study's seeds and family size: from its finished
    runs where there are any, else from defaults and the first dataset's test counts, where it is prepared."""
    spec = study.datasets[0]
    root = (
        Path(spec.data)
        if spec.data and (Path(spec.data) / DATASET_INFO).is_file()
        else study.folder.prepared(spec.name)
    )
    counts = None
    if (root / DATASET_INFO).is_file():
        info = read_info(root)
        if info.task == "binary":
            counts = [info.counts.get("test", {}).get(name, 0) for name in info.classes]
    metric = metric_label(comparison.groups[0].metric) if comparison and comparison.groups else "AUROC"
    return planned_power(comparison, len(study.seeds), max(1, families.size(PRIMARY)), counts, metric)


def _external_comparisons(study: Study, finished: list[PlannedRun], families: TestFamilies) -> dict[str, Comparison]:
    """Per external test set, the runs evaluated on it compared as on their own test split (same pairs, same
    tests), written to ``external/<set>/`` in the study's folder."""
    runs_on: dict[str, tuple[str, list[Path]]] = {}  # set name -> (its prepared folder's name, the runs)
    for spec in study.datasets:
        for name, dataset in external_sets(study, spec.name).items():
            runs_on.setdefault(name, (dataset.root.name, []))[1].extend(
                run.run_dir for run in finished if run.dataset == spec.name
            )
    return {
        name: compare_runs(
            run_dirs,
            split="test",
            external=folder,
            out=study.out / "external" / slug(name),
            evaluate_missing=False,
            families=families,
            **study.compare,
        )
        for name, (folder, run_dirs) in runs_on.items()
        if run_dirs
    }


def _logged(session: _Session, seconds: float, jobs: list) -> StudyLog:
    """``study.json`` with this invocation in it (added, or its entry brought up to date): when, how long, on how
    many processes, how many runs and cells it trained or tuned (0 for one that found everything done), and the
    command that ran it."""
    path = session.study.out / StudyLog.FILE
    study_log = StudyLog.read(path) if path.is_file() else StudyLog(study=session.study.name)
    entry = {
        "started": session.started_at.isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "processes": session.dist.world_size,
        "worked": sum(job.status in ("trained", "tuned") for job in jobs),
        "command": _command(session.study_path),
    }
    if session.log_entry is None:
        study_log.invocations.append(entry)
        session.log_entry = len(study_log.invocations) - 1
    else:
        study_log.invocations[session.log_entry] = entry
    study_log.write(path)
    return study_log


def _command(study_path: str | os.PathLike) -> str:
    """The command line of this invocation, or the Python call that made it."""
    if sys.argv[1:2] == ["experiment"]:
        return shlex.join(["lowmed", *sys.argv[1:]])
    return f"lowmed.run_experiment({str(study_path)!r})"
