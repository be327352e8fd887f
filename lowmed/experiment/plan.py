"""A study's plan: its pretrain stages, its tuning cells and its grid of runs, with stable, readable names.

A pretrain stage is identified by everything that makes it — model, weights, corpus and every training option —
so two arms share one only when they would have trained the very same run; its folder name carries a short hash
of all that. A grid run is named ``<dataset>-<arm>-<model>-n<N>-seed<K>``; arm names are unique, so these are too.
With ``tune:``, each (dataset, arm, N) is a tuning cell ``<dataset>-<arm>-<model>-n<N>`` on the first seed's subset
(``-seed<K>`` for every seed with ``per_seed``), whose chosen values its runs take.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, replace
from itertools import combinations
from pathlib import Path

from lowmed.contracts import DATASET_INFO, FamilyMember, StudyDir, TestFamilies, is_prepared, slug
from lowmed.data.leakage import guard_pretraining
from lowmed.data.manifest import PreparedDataset
from lowmed.experiment.portable import PortablePaths
from lowmed.experiment.study import Arm, DatasetSpec, Study
from lowmed.tuning import TuningCell

log = logging.getLogger(__name__)

# a dataset's prepare options, as in 'lowmed prepare', that name CSV columns
_CSV_COLUMN_OPTIONS = {
    "path_column": "path",
    "label_column": "label",
    "label_columns": "labels",
    "group_column": "group",
    "split_column": "split",
}


@dataclass
class PlannedTuning:
    """A tuning cell of the study: one (dataset, arm, N), tuned on one seed's subset."""

    cell: TuningCell
    arm: Arm
    dataset: str
    per_class: int
    seed: int
    status: str = "planned"
    detail: str = ""

    @property
    def name(self) -> str:
        return self.cell.name


@dataclass(kw_only=True)
class PlannedJob:
    """A run the study trains, and what became of it."""

    name: str
    run_dir: Path
    values: dict  # TrainConfig fields (PretrainConfig fields for a self-supervised pretraining)
    dataset: str  # the study dataset it trains on: for a pretraining, its corpus
    status: str = "planned"
    detail: str = ""


@dataclass(kw_only=True)
class PlannedPretraining(PlannedJob):
    """A pretraining whose weights an arm's runs start from: ``lowmed train`` on a labelled corpus, or
    ``lowmed pretrain`` on unlabelled images (self-supervised)."""

    self_supervised: bool = False


@dataclass(kw_only=True)
class PlannedRun(PlannedJob):
    """A run of the study's grid: one arm, dataset, N and seed."""

    arm: Arm
    tuning: PlannedTuning | None = None  # the tuning cell whose chosen values this run takes
    pretraining: PlannedPretraining | None = None  # the pretraining whose weights this run starts from


def prepared(spec: DatasetSpec, out: Path, role: str = "full") -> PreparedDataset:
    """The dataset, prepared once inside the study's folder (demo data generated there); ``role="test"`` for an
    external test set, ``"unlabelled"`` for a self-supervised stage's corpus."""
    from lowmed.data.formats import CsvColumns
    from lowmed.data.prepare import prepare
    from lowmed.data.subsample import source_changed
    from lowmed.data.synthetic import prepare_demo_dataset

    target = StudyDir(out).prepared(spec.name)
    options = dict(spec.prepare)
    role = options.pop("role", role)
    columns = CsvColumns(**{field: options.pop(key) for key, field in _CSV_COLUMN_OPTIONS.items() if key in options})
    if (target / DATASET_INFO).is_file():
        dataset = PreparedDataset.load(target)
        if not spec.demo and source_changed(dataset, columns):
            log.warning(
                f"{spec.data} changed since this study prepared it into {target}; the study keeps its copy so that "
                "its runs stay comparable (a new study prepares the source as it is now)"
            )
        return dataset
    if spec.demo:
        return prepare_demo_dataset(spec.demo, StudyDir(out).raw(spec.name), target)
    assert spec.data is not None  # a dataset gives data or demo
    source = Path(spec.data).expanduser()
    if is_prepared(source):
        return PreparedDataset.load(source)
    return prepare(source, target, csv_columns=columns, role=role, **options)


def external_sets(study: Study, dataset: str) -> dict[str, PreparedDataset]:
    """The external test sets of the study's dataset ``dataset`` by their names, prepared (once) in its folder."""
    spec = next(spec for spec in study.datasets if spec.name == dataset)
    return {external.name: prepared(external, study.out, role="test") for external in spec.external}


# What names a pretraining corpus in a stage's identity: the fields that change what the stage learns, as they were
# when stages were first named. Not asdict(spec): a field added to DatasetSpec later (external test sets) would
# rename every existing stage, and a study run again would train its stages again.
_CORPUS_FIELDS = ("name", "data", "demo", "prepare")
_PATH_OPTIONS = ("weights", "weights_dir", "init")


# the study's training options a self-supervised stage takes too: it pretrains at the study's resolution
_SHARED_WITH_SELF_SUPERVISED = ("image_size", "device", "amp")


def pretrain_stage(study: Study, arm: Arm, target: str | None = None) -> tuple[str, dict]:
    """The stage's name and its TrainConfig values (all but ``data`` and ``out``); for a self-supervised arm its
    PretrainConfig values, for the study dataset ``target`` (whose val and test images its corpus is guarded
    against, and whose val split monitors it): one stage per target."""
    if arm.pretrain is None:
        raise ValueError(f"arm {arm.name} is not pretrained by lowmed")
    spec, options = arm.pretrain.dataset, arm.pretrain.options
    if arm.self_supervised:
        shared = {k: v for k, v in study.train.items() if k in _SHARED_WITH_SELF_SUPERVISED}
        values = {**shared, **options, "model": arm.model}
    else:
        values = {"weights": "none", **study.train, **options, "model": arm.model}
    corpus = {name: getattr(spec, name) for name in _CORPUS_FIELDS}
    # files by their place against the study's anchors, so that a stage has one name on every machine
    portable = PortablePaths.for_study(study.variables)
    named = {**values, **{k: portable.identity(str(values[k])) for k in _PATH_OPTIONS if values.get(k) is not None}}
    corpus["data"] = portable.identity(spec.data) if spec.data else None
    made = {"values": named, "dataset": corpus, **({"target": target} if arm.self_supervised else {})}
    digest = hashlib.sha256(json.dumps(made, sort_keys=True, default=str).encode()).hexdigest()[:8]
    if arm.self_supervised:
        return slug(f"{arm.model}-{arm.pretrain.method}-on-{spec.name}-for-{target}-{digest}"), values
    return slug(f"{arm.model}-on-{spec.name}-{digest}"), values


def prepare_study_data(study: Study) -> None:
    """Prepare every dataset the study reads inside its folder (its datasets, their external test sets, the
    pretraining corpora) and draw each dataset's subsets, one per N and seed; what is there already is kept."""
    from lowmed.data.subsample import subsample

    for arm in study.arms:
        if arm.pretrain is not None:
            prepared(arm.pretrain.dataset, study.out, "unlabelled" if arm.self_supervised else "full")
    for spec in study.datasets:
        dataset = prepared(spec, study.out)
        for external in spec.external:
            prepared(external, study.out, role="test")
        for per_class in study.per_class:
            for seed in study.seeds:
                subset = study.folder.subset(spec.name, per_class, seed)
                if not subset.is_file():
                    subsample(dataset.root, per_class, seed=seed, out=subset)


def plan(study: Study) -> tuple[list[PlannedPretraining], list[PlannedTuning], list[PlannedRun]]:
    """The pretrain stages, the tuning cells and the grid of runs, computed from the study file and the data
    ``prepare_study_data`` prepared; nothing is written. Before that (a dry run), a dataset stands in the runs'
    values by its name, and a pretraining corpus by its source."""
    corpora = [arm.pretrain.dataset for arm in study.arms if arm.pretrain is not None]
    # each dataset's prepared folder, read once: None before prepare_study_data
    found = {spec.name: _prepared_already(spec, study.out) for spec in [*study.datasets, *corpora]}
    pretrains: dict[str, PlannedPretraining] = {}
    # (arm, its target: self-supervised only) -> the pretraining
    pretrain_of: dict[tuple[str, str | None], PlannedPretraining] = {}
    for arm in study.arms:
        if arm.pretrain is None:
            continue
        for target in [spec.name for spec in study.datasets] if arm.self_supervised else [None]:
            name, values = pretrain_stage(study, arm, target)
            if name not in pretrains:
                spec = arm.pretrain.dataset
                run_dir = study.folder.pretrain_stage(name)
                corpus = found[spec.name]
                data = str(corpus.root) if corpus is not None else spec.data or spec.demo
                if target is not None:  # self-supervised: a stage per target, its prepared dir (before: its name)
                    target_data = found[target]
                    values = {**values, "target": str(target_data.root) if target_data is not None else target}
                else:
                    values = {**values, "arm": name}
                pretrains[name] = PlannedPretraining(
                    name=name,
                    run_dir=run_dir,
                    values={**values, "data": data, "out": str(run_dir)},
                    dataset=spec.name,
                    self_supervised=arm.self_supervised,
                )
            pretrain_of[(arm.name, target)] = pretrains[name]
    _guard_pretraining_data(study, pretrain_of, found)
    cells: dict[tuple, PlannedTuning] = {}
    tuning = study.folder.tuning
    runs: list[PlannedRun] = []
    for spec in study.datasets:
        dataset = found[spec.name]
        for per_class in study.per_class:
            for seed in study.seeds:
                subset = study.folder.subset(spec.name, per_class, seed)
                for arm in study.arms:
                    name = slug(f"{spec.name}-{arm.name}-{arm.model}-n{per_class}-seed{seed}")
                    pretraining = pretrain_of.get((arm.name, spec.name)) or pretrain_of.get((arm.name, None))
                    weights = str(pretraining.run_dir) if pretraining is not None else arm.weights
                    values = {
                        **study.train,
                        **arm.options,
                        "arm": arm.name,
                        "data": str(dataset.root) if dataset else spec.name,
                        "subset": str(subset),
                        "model": arm.model,
                        "weights": weights,
                        "seed": seed,
                        "out": str(study.folder.run(name)),
                    }
                    cell = None
                    if study.tune is not None:
                        tuned_seed = seed if study.tune.per_seed else study.seeds[0]
                        key = (spec.name, arm.name, per_class, tuned_seed)
                        if key not in cells:  # the first seed comes first: its values are the cell's base
                            suffix = f"-seed{seed}" if study.tune.per_seed else ""
                            cell_name = slug(f"{spec.name}-{arm.name}-{arm.model}-n{per_class}{suffix}")
                            base = {k: v for k, v in values.items() if k != "out"}
                            storage = f"sqlite:///{(tuning / 'optuna.db').resolve()}"
                            cells[key] = PlannedTuning(
                                TuningCell(cell_name, base, tuning / cell_name, storage),
                                arm,
                                spec.name,
                                per_class,
                                seed,
                            )
                        cell = cells[key]
                    planned = PlannedRun(
                        name=name,
                        run_dir=study.folder.run(name),
                        values=values,
                        dataset=spec.name,
                        arm=arm,
                        tuning=cell,
                        pretraining=pretraining,
                    )
                    runs.append(planned)
    return list(pretrains.values()), list(cells.values()), runs


def _guard_pretraining_data(
    study: Study,
    pretrain_of: dict[tuple[str, str | None], PlannedPretraining],
    found: dict[str, PreparedDataset | None],
) -> None:
    """Refuse a study whose pretraining data holds images of a target's val or test split, before anything trains
    (``lowmed.data.leakage``, image by image). Before the data are prepared (a dry run), say where a pretraining
    source and a target's folders overlap, to be checked when the study runs."""
    for (arm, target), stage in pretrain_of.items():
        corpus_spec = next(a.pretrain.dataset for a in study.arms if a.name == arm and a.pretrain is not None)
        corpus = found[corpus_spec.name]
        for spec in study.datasets:
            if target not in (None, spec.name):
                continue
            what = f"arm {arm}'s pretraining data ({corpus_spec.name})"
            target_data = found[spec.name]
            if corpus is not None and target_data is not None:
                trained, selected = (
                    (corpus.manifest, None) if stage.self_supervised else (corpus.split("train"), corpus.split("val"))
                )
                guard_pretraining(trained, target_data, what, selected=selected, say=False)
            elif corpus_spec.data and spec.data and _nested(Path(corpus_spec.data), Path(spec.data)):
                log.warning(
                    f"{what} and dataset {spec.name} share folders ({corpus_spec.data}, {spec.data}); lowmed compares "
                    "them image by image before anything trains and refuses pretraining data that holds the "
                    "dataset's val or test images"
                )


def _prepared_already(spec: DatasetSpec, out: Path) -> PreparedDataset | None:
    """A dataset as the study has it prepared (or as given prepared); None before the study prepares it."""
    target = StudyDir(out).prepared(spec.name)
    if (target / DATASET_INFO).is_file():
        return PreparedDataset.load(target)
    if spec.data and is_prepared(Path(spec.data).expanduser()):
        return PreparedDataset.load(Path(spec.data).expanduser())
    return None


def _nested(one: Path, other: Path) -> bool:
    """The same folder, or one inside the other."""
    one, other = one.expanduser().resolve(), other.expanduser().resolve()
    return one.is_relative_to(other) or other.is_relative_to(one)


def study_baseline(study: Study) -> str | None:
    """The arm every other arm is set against: the study's ``compare: baseline``, else its one arm trained from
    scratch (weights none, no pretraining), else none."""
    if study.compare.get("baseline"):
        return str(study.compare["baseline"])
    scratch = [arm.name for arm in study.arms if arm.weights == "none" and arm.pretrain is None]
    return scratch[0] if len(scratch) == 1 else None


def study_families(study: Study, runs: list[PlannedRun]) -> TestFamilies:
    """The comparisons the study is planned to make, fixed before any run trains: every arm against the baseline at
    every N of every dataset (primary), and every other pair of arms (secondary). Datasets are named as the
    comparison names them, by their prepared folder."""
    baseline = None if study.pairs else study_baseline(study)
    entity = {arm.name: f"{arm.name} · {arm.model}" for arm in study.arms}
    planned = {frozenset(pair): pair for pair in study.pairs}  # compare.pairs: the primary family, as a − b
    primary: list[FamilyMember] = []
    secondary: list[FamilyMember] = []
    for spec in study.datasets:
        dataset = next(Path(run.values["data"]).name for run in runs if run.dataset == spec.name)
        for per_class in study.per_class:
            for first, second in combinations(study.arms, 2):
                a, b = planned.get(frozenset((first.name, second.name)), (first.name, second.name))
                if a == baseline:
                    a, b = b, a
                member = FamilyMember(dataset=dataset, per_class=per_class, a=entity[a], b=entity[b])
                if study.pairs:
                    chosen = frozenset((a, b)) in planned
                else:
                    chosen = baseline is None or b == baseline
                (primary if chosen else secondary).append(member)
    return TestFamilies(
        source=f"study {study.name}, fixed when planned", baseline=baseline, primary=primary, secondary=secondary
    )


def differences_from_plan(recorded, planned: dict, where: str) -> list[str]:
    """The options of ``planned`` (TrainConfig or PretrainConfig values) in which a run's recorded config differs:
    "epochs 2 (now 3)". The model by its registry name and ``auto`` weights resolved, as training records them;
    paths by the file they name."""
    from lowmed.config import PretrainConfig
    from lowmed.models.registry import get_model_spec
    from lowmed.models.weights import resolve_weights

    wanted = type(recorded).from_dict(planned, source=where)
    model = get_model_spec(wanted.model).name
    weights = "init" if isinstance(recorded, PretrainConfig) else "weights"
    wanted = replace(wanted, model=model, **{weights: resolve_weights(getattr(wanted, weights), model)})
    return [
        f"{name} {getattr(recorded, name)} (now {getattr(wanted, name)})"
        for name in planned
        if name != "out" and not _same_option(getattr(wanted, name), getattr(recorded, name))
    ]


def _same_option(wanted, recorded) -> bool:
    """Equal, or the same file by two spellings of its path (train records paths resolved)."""
    if wanted is None or wanted == recorded:  # None: filled in when the run started
        return True
    return isinstance(wanted, str) and isinstance(recorded, str) and Path(wanted).resolve() == Path(recorded).resolve()
