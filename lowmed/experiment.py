"""``lowmed experiment STUDY.yaml``: the three-way study as one resumable command, ending in a report.

A study is a grid: datasets × arms (model + weight source) × per-class sizes × seeds, trained under identical
conditions (the same subsets, augmentation, epoch budget and evaluation for every arm). An arm's weights may be a
**pretrain stage**: a run on a broader medical corpus, trained once and then fine-tuned on every small subset
(Model C). Finished runs are skipped, interrupted ones resumed, failed ones retried once; one failure never stops
the others; an arm whose weights cannot be had is reported as skipped, with the reason.

Under ``torchrun`` the pretrain stages train data-parallel across all processes, and each process then takes the
grid's next unclaimed run and trains it alone on its own GPU; rank 0 prepares the data, draws the subsets, and
writes the comparison and the report once every process has finished.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import yaml

import lowmed
from lowmed.compare import compare_runs, format_p
from lowmed.config import TrainConfig
from lowmed.console import progress_bar
from lowmed.data.formats import CsvColumns
from lowmed.data.manifest import DATASET_INFO, MANIFEST, PreparedDataset, read_info
from lowmed.data.prepare import prepare
from lowmed.data.subsample import subsample
from lowmed.data.synthetic import prepare_demo_dataset
from lowmed.distributed import Distributed
from lowmed.errors import Interrupted, LowmedError, RunFailed
from lowmed.evaluation.evaluate import METRICS_JSON, evaluate
from lowmed.io import write_text
from lowmed.training.checkpoint import LAST
from lowmed.training.train import SUMMARY, resume_run, train

_STUDY_KEYS = {"name", "out", "datasets", "arms", "per_class", "seeds", "train", "evaluate", "compare"}
_DATASET_KEYS = {"name", "data", "demo", "prepare"}
_ARM_KEYS = {"name", "model", "weights", "pretrain", "options"}
# a dataset's prepare options, as in 'lowmed prepare', that name CSV columns
_CSV_COLUMN_OPTIONS = {"path_column": "path", "label_column": "label", "label_columns": "labels",
                       "group_column": "group", "split_column": "split"}
# under torchrun, a process that has finished its share of the grid waits this long for the slowest one
GRID_WAIT = timedelta(hours=24)


@dataclass
class DatasetSpec:
    name: str
    data: str | None = None  # prepared dir or raw dataset
    demo: str | None = None  # target | corpus: lowmed's synthetic demo data
    prepare: dict = field(default_factory=dict)  # options for prepare() when data is raw


@dataclass
class Arm:
    name: str
    model: str
    weights: str = "none"  # none | imagenet | PATH | RUN_DIR; replaced by the pretrain run when pretrain is set
    pretrain: dict | None = None  # {dataset: DatasetSpec fields, and TrainConfig options for the pretraining}
    options: dict = field(default_factory=dict)  # TrainConfig options for this arm only


@dataclass
class Study:
    name: str
    out: Path
    datasets: list[DatasetSpec]
    arms: list[Arm]
    per_class: list[int]
    seeds: list[int]
    train: dict = field(default_factory=dict)
    evaluate: dict = field(default_factory=dict)
    compare: dict = field(default_factory=dict)


@dataclass
class PlannedRun:
    name: str
    run_dir: Path
    values: dict  # TrainConfig fields
    arm: Arm | None = None  # None for a pretrain stage
    dataset: str = ""
    status: str = "planned"
    detail: str = ""


def _checked_keys(values: Any, allowed: set[str], where: str) -> dict:
    if not isinstance(values, dict):
        raise LowmedError(f"{where}: expected a mapping")
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise LowmedError(f"{where}: unknown key(s) {', '.join(unknown)}; expected {', '.join(sorted(allowed))}")
    return values


def _dataset_spec(values: Any, where: str) -> DatasetSpec:
    values = dict(_checked_keys(values, _DATASET_KEYS, where))
    if "name" not in values or bool(values.get("data")) == bool(values.get("demo")):
        raise LowmedError(f"{where}: needs a name and exactly one of data (a dataset path) or demo (target|corpus)")
    if values.get("demo") not in (None, "target", "corpus"):
        raise LowmedError(f"{where}.demo: {values['demo']!r}; expected target or corpus")
    if values.get("data"):
        values["data"] = _expand(str(values["data"]), where)
    return DatasetSpec(**values)


def _expand(path: str, where: str) -> str:
    """``${VAR}`` in a study path is the environment variable's value; an unset one is an error."""
    expanded = os.path.expandvars(path)
    if "$" in expanded:
        raise LowmedError(f"{where}: {path!r} names an environment variable that is not set")
    return expanded


def load_study(path: str | os.PathLike) -> Study:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise LowmedError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise LowmedError(f"{path}: not valid YAML ({exc})") from None
    raw = _checked_keys(raw, _STUDY_KEYS, str(path))
    for key in ("datasets", "arms", "per_class", "seeds"):
        if not isinstance(raw.get(key), list) or not raw[key]:
            raise LowmedError(f"{path}: {key} must be a non-empty list")
    datasets = [_dataset_spec(d, f"{path}: datasets[{i}]") for i, d in enumerate(raw["datasets"])]
    arms = []
    for i, values in enumerate(raw["arms"]):
        values = _checked_keys(values, _ARM_KEYS, f"{path}: arms[{i}]")
        if "model" not in values:
            raise LowmedError(f"{path}: arms[{i}] needs a model")
        pretrain = values.get("pretrain")
        if pretrain is not None:
            pretrain = dict(_checked_keys(pretrain, {"dataset", *TrainConfig.__dataclass_fields__},
                                          f"{path}: arms[{i}].pretrain"))
            pretrain["dataset"] = _dataset_spec(pretrain.get("dataset"), f"{path}: arms[{i}].pretrain.dataset")
        arms.append(Arm(name=str(values.get("name", f"arm{i + 1}")), model=str(values["model"]),
                        weights=str(values.get("weights", "none")), pretrain=pretrain,
                        options=dict(values.get("options") or {})))
    for key in ("per_class", "seeds"):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in raw[key]):
            raise LowmedError(f"{path}: {key} must be a list of whole numbers")
    if any(n < 1 for n in raw["per_class"]):
        raise LowmedError(f"{path}: per_class sizes must be at least 1")
    shared = dict(raw.get("train") or {})
    TrainConfig.from_dict({**shared, "data": "."}, source=f"{path}: train").validate()  # field-named errors now
    for arm in arms:
        TrainConfig.from_dict({**shared, **arm.options, "data": "."}, source=f"{path}: arm {arm.name} options")
    return Study(name=str(raw.get("name", path.stem)), out=Path(_expand(str(raw.get("out", f"runs/{path.stem}")),
                                                                         f"{path}: out")),
                 datasets=datasets, arms=arms, per_class=sorted(raw["per_class"]), seeds=list(raw["seeds"]),
                 train=shared, evaluate=dict(raw.get("evaluate") or {}), compare=dict(raw.get("compare") or {}))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-").lower()


def _prepared(spec: DatasetSpec, out: Path, quiet: bool) -> PreparedDataset:
    """The dataset, prepared once inside the study's folder (demo data generated there)."""
    target = out / "data" / _slug(spec.name)
    if (target / DATASET_INFO).is_file():
        return PreparedDataset.load(target)
    if spec.demo:
        return prepare_demo_dataset(spec.demo, out / "data" / "raw" / _slug(spec.name), target, quiet)
    source = Path(spec.data).expanduser()
    if (source / MANIFEST).is_file() or source.suffix == ".csv" and source.with_suffix(".yaml").is_file():
        return PreparedDataset.load(source)
    options = dict(spec.prepare)
    columns = {field: options.pop(key) for key, field in _CSV_COLUMN_OPTIONS.items() if key in options}
    return prepare(source, target, csv_columns=CsvColumns(**columns), quiet=quiet, **options)


def plan(study: Study, prepare_data: bool = True) -> tuple[list[PlannedRun], list[PlannedRun]]:
    """The pretrain stages and the grid of runs, with stable, readable names. With ``prepare_data`` the datasets
    are prepared and the subsets drawn (a dry run leaves both out)."""
    pretrains, runs = [], []
    pretrain_dirs: dict[str, Path] = {}
    for arm in study.arms:
        if arm.pretrain is None:
            continue
        spec: DatasetSpec = arm.pretrain["dataset"]
        options = {k: v for k, v in arm.pretrain.items() if k != "dataset"}
        name = _slug(f"{arm.model}-on-{spec.name}")
        run_dir = study.out / "pretrain" / name
        pretrain_dirs[arm.name] = run_dir
        if all(p.name != name for p in pretrains):
            data = str(_prepared(spec, study.out, quiet=True).root) if prepare_data else spec.data or spec.demo
            values = {**study.train, **options, "data": data, "model": arm.model, "out": str(run_dir)}
            values.setdefault("weights", "none")
            pretrains.append(PlannedRun(name, run_dir, values, dataset=spec.name))
    for spec in study.datasets:
        dataset = _prepared(spec, study.out, quiet=True) if prepare_data else None
        for per_class in study.per_class:
            for seed in study.seeds:
                subset = study.out / "subsets" / _slug(spec.name) / f"subset-{per_class}-seed{seed}.csv"
                if dataset is not None and not subset.is_file():
                    subsample(dataset.root, per_class, seed=seed, out=subset, quiet=True)
                for arm in study.arms:
                    name = _slug(f"{spec.name}-{arm.name}-{arm.model}-n{per_class}-seed{seed}")
                    weights = str(pretrain_dirs[arm.name]) if arm.name in pretrain_dirs else arm.weights
                    values = {**study.train, **arm.options, "data": str(dataset.root) if dataset else spec.name,
                              "subset": str(subset),
                              "model": arm.model, "weights": weights, "seed": seed,
                              "out": str(study.out / "runs" / name)}
                    runs.append(PlannedRun(name, study.out / "runs" / name, values, arm, spec.name))
    return pretrains, runs


def _status(run_dir: Path) -> str:
    if not (run_dir / SUMMARY).is_file():
        return "resumable" if (run_dir / LAST).is_file() else "new"
    status = json.loads((run_dir / SUMMARY).read_text()).get("status")
    if status == "completed":
        return "completed"
    return "resumable" if (run_dir / LAST).is_file() and status != "failed" else "new"


def _execute(job: PlannedRun, evaluate_options: dict, skip_reasons: dict[str, str], dist: Distributed) -> None:
    """Train (or resume) one run across ``dist``'s processes and evaluate it; record what happened in
    ``job.status``.

    An input error (say, ImageNet weights that cannot be downloaded) skips the rest of its arm too. A crash is
    retried once from scratch, except in a run shared by several processes: they cannot retry in step after one
    of them crashed alone, so the study stops there (run it again to resume).
    """
    if job.arm is not None and job.arm.name in skip_reasons:
        job.status, job.detail = "skipped", skip_reasons[job.arm.name]
        return
    state = dist.share(_status(job.run_dir))  # rank 0's reading, before any rank writes there
    if state == "completed":
        job.status = "done before"
    else:
        for attempt in (1, 2):
            try:
                if state == "resumable" and attempt == 1:
                    resume_run(job.run_dir, quiet=True, dist=dist)
                else:
                    train(TrainConfig.from_dict(job.values, source=job.name), overwrite=True, quiet=True, dist=dist)
                job.status, job.detail = "trained", f"on the second try, after {job.detail}" if attempt == 2 else ""
                break
            except Interrupted:
                raise
            except LowmedError as exc:
                job.status, job.detail = "skipped", str(exc)
                if job.arm is not None:
                    skip_reasons[job.arm.name] = str(exc)
                return
            except Exception as exc:  # a failure during the run: once more, from scratch
                if dist.enabled:
                    raise RunFailed(f"{job.name} failed in process {dist.rank}: {type(exc).__name__}: {exc}; "
                                    "run the same command again to resume the study") from exc
                job.status, job.detail = "failed", f"{type(exc).__name__}: {exc}"
        if job.status == "failed":
            return
    if job.arm is not None and not (job.run_dir / "eval" / "test" / METRICS_JSON).is_file():
        evaluate(job.run_dir, quiet=True, **evaluate_options)


def _claim(path: Path) -> bool:
    """True for the one process that creates ``path`` first (an atomic create, also on a shared filesystem), so
    a process that finishes early takes the next run instead of idling behind a fixed share."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def run_experiment(study_path: str | os.PathLike, *, dry_run: bool = False, quiet: bool = False) -> dict:
    """Run (or resume) the whole study and write ``report.md``; with ``dry_run`` only plan it.

    Under torchrun every process returns the runs' outcomes; only rank 0's result names the report.
    """
    started = time.perf_counter()
    study = load_study(study_path)
    if dry_run:
        pretrains, runs = plan(study, prepare_data=False)
        return {"study": study, "pretrain": pretrains, "runs": runs}
    dist = Distributed.from_environment(str(study.train.get("device", "auto")), timeout=GRID_WAIT)
    claims = study.out / ".claims"  # under torchrun: which process took which grid run
    planned: list = []

    def prepare_study() -> None:  # rank 0 prepares the data and draws the subsets; the others then read them
        shutil.rmtree(claims, ignore_errors=True)  # left by an invocation that was stopped
        planned.append(plan(study))

    dist.on_main(prepare_study)
    pretrains, runs = planned[0] if planned else plan(study)
    alone = Distributed()  # a grid run is small: each process trains its own, on its own GPU
    own_runs: list[PlannedRun] = []
    skip_reasons: dict[str, str] = {}
    jobs = pretrains + runs
    prefix = f"[process {dist.rank}] " if dist.world_size > 1 else ""
    with progress_bar(transient=False, disable=quiet or not dist.is_main) as bar:
        task = bar.add_task(f"study {study.name}", total=len(jobs), status="")
        for index, job in enumerate(jobs, start=1):
            if job.arm is not None and dist.world_size > 1 and not _claim(claims / job.name):
                bar.advance(task)  # another process has it
                continue
            bar.update(task, status=f"{job.name}")
            if job.arm is None:
                _execute(job, study.evaluate, skip_reasons, dist)
            else:
                _execute(job, study.evaluate, skip_reasons, alone)
                own_runs.append(job)
            if job.arm is None and job.status in ("failed", "skipped"):
                for run in runs:  # the arm that needed this pretraining cannot run
                    if run.arm.pretrain is not None and run.values["weights"] == str(job.run_dir):
                        skip_reasons[run.arm.name] = f"pretrain stage {job.name} {job.status}: {job.detail}"
            if not quiet:
                bar.console.print(f"{prefix}[{index}/{len(jobs)}] {job.name}: {job.status}"
                                  + (f" — {job.detail}" if job.detail else ""), markup=False, highlight=False,
                                  soft_wrap=True)
            bar.advance(task)
    if dist.enabled:  # every process's outcomes, on every process (waiting for the slowest)
        outcomes = {name: (status, detail) for share in dist.gather_objects([(r.name, r.status, r.detail)
                                                                             for r in own_runs])
                    for name, status, detail in share}
        for run in runs:
            run.status, run.detail = outcomes[run.name]
        if dist.is_main:
            shutil.rmtree(claims, ignore_errors=True)
    result = {"study": study, "pretrain": pretrains, "runs": runs, "report": None}
    if not dist.is_main:
        return result
    finished = [r for r in runs if r.status in ("trained", "done before")]
    comparison = None
    if finished:
        comparison = compare_runs([study.out / "runs"], out=study.out, quiet=True, **study.compare)
    wall = time.perf_counter() - started
    report = study_report(study, pretrains, runs, comparison, wall, processes=dist.world_size)
    write_text(study.out / "report.md", report)
    return {**result, "compare": comparison, "report": str(study.out / "report.md"), "wall_seconds": wall}


def _p_text(p: float) -> str:
    text = format_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def _sentence(row: dict, baseline: str) -> str:
    """One plain-language line for a primary comparison, phrased as (other arm − baseline)."""
    sign = 1 if row["b"] == baseline else -1
    other = row["a"] if sign == 1 else row["b"]
    difference = sign * row["estimate"]
    low, high = sorted((sign * row["ci_low"], sign * row["ci_high"]))
    metric = row["metric"].replace("auroc", "AUROC").replace("_", " ")
    numbers = (f"{difference:+.3f} [{low:+.3f}, {high:+.3f}], {_p_text(row['p'])} "
               f"(Holm-adjusted {_p_text(row['p_holm'])})")
    if not row["significant"]:
        return (f"At {row['per_class']} per class, {other} did not differ significantly from {baseline} in "
                f"{metric}: {numbers}.")
    verb = "improved" if difference > 0 else "lowered"
    return f"At {row['per_class']} per class, {other} {verb} {metric} over {baseline} by {numbers}."


def study_report(study: Study, pretrains: list[PlannedRun], runs: list[PlannedRun], comparison: dict | None,
                 wall_seconds: float, processes: int = 1) -> str:
    """``report.md``: the question, the setup, the results table with intervals and p-values, learning curves,
    and conclusions written from the numbers."""
    lines = [f"# {study.name}: does transfer learning help at small training-set sizes?", "",
             "**Question.** Does a pretrained backbone (ImageNet, Model B; or a broader medical corpus, Model C) "
             "beat the same budget trained from scratch (Model A) when only a few labelled images per class are "
             "available — and by how much, with what certainty?", "", "## Setup", ""]
    for spec in study.datasets:
        info = read_info(next(run.values["data"] for run in runs if run.dataset == spec.name))
        lines.append(f"- **{spec.name}** ({info['task']}; classes: {', '.join(info['classes'])}): "
                     + "; ".join(f"{split} {sum(c.values())} images" for split, c in info["counts"].items())
                     + f"; splits {', '.join(f'{s} {o}' for s, o in info['splits']['origin'].items())}.")
    lines.append(f"- Training images per class: {', '.join(map(str, study.per_class))}; seeds: "
                 f"{', '.join(map(str, study.seeds))} (one seed draws the same subset for every arm; subsets are "
                 "nested in N).")
    for arm in study.arms:
        source = (f"pretrained on {arm.pretrain['dataset'].name} by lowmed" if arm.pretrain else arm.weights)
        lines.append(f"- Arm **{arm.name}**: {arm.model}, weights {source}"
                     + (f", own options {arm.options}" if arm.options else "") + ".")
    lines.append(f"- Shared training options: {study.train or 'lowmed defaults'}; evaluation: "
                 f"{study.evaluate or 'defaults'} (95 % bootstrap intervals over patients).")
    summaries = [json.loads((r.run_dir / SUMMARY).read_text()) for r in runs if (r.run_dir / SUMMARY).is_file()]
    if summaries:
        first = summaries[0]
        lines.append(f"- Hardware: {first['device']} ({first['device_name']}), AMP {first.get('precision', 'off')}; "
                     f"lowmed {lowmed.__version__}, torch {torch.__version__}, Python {platform.python_version()}.")
    done = sum(r.status in ("trained", "done before") for r in pretrains + runs)
    training = sum(s.get("epoch_seconds_total", 0) for s in summaries)
    lines.append(f"- Runs: {done} of {len(pretrains) + len(runs)} completed; {training / 60:.1f} min of training "
                 f"epochs in all; this invocation took {wall_seconds / 60:.1f} min"
                 + (f" on {processes} processes (torchrun: pretrain stages data-parallel, grid runs one per process)."
                    if processes > 1 else "."))
    if comparison:
        lines += ["", "## Results", ""]
        lines.append((study.out / "compare.md").read_text().split("\n", 2)[2] if (study.out / "compare.md").is_file()
                     else "")
        for figure in comparison["figures"]:
            lines += [f"![learning curve]({Path(figure).name})", ""]
        lines += ["## Conclusions", ""]
        primary = [row for row in comparison["comparisons"] if row["test"].startswith("paired bootstrap")]
        baselines = {row["a"] for row in primary if row["a"].startswith("A ")} | \
                    {row["b"] for row in primary if row["b"].startswith("A ")}
        sentences = [_sentence(row, baseline) for baseline in sorted(baselines) for row in primary
                     if baseline in (row["a"], row["b"])]
        sentences += [_sentence(row, row["b"]) for row in primary if not ({row["a"], row["b"]} & baselines)]
        lines += [f"- {s}" for s in sentences] or ["- No pair of arms shared test images to compare."]
    problems = [r for r in pretrains + runs if r.status in ("failed", "skipped")]
    if problems:
        lines += ["", "## Skipped or failed runs", ""]
        lines += [f"- {r.name}: {r.status} — {r.detail}" for r in problems]
    return "\n".join(lines) + "\n"
