"""The study file: ``STUDY.yaml`` read into dataclasses and checked as a whole before anything runs.

Every mistake a study can hold — an unknown key, two arms of one name, a model or weights that do not exist, a data
path that is not there, a baseline that is no arm — is one ``LowmedError`` naming the field or the arm, so that a
typo costs seconds, not a half-trained grid.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lowmed.config import PretrainConfig, TrainConfig, check_seed, first_repeated
from lowmed.contracts import StudyDir, read_yaml, slug
from lowmed.errors import LowmedError, quoted
from lowmed.tracking import TrackSettings
from lowmed.tuning import TuneSettings

_STUDY_KEYS = {
    "name",
    "notes",
    "out",
    "publish",
    "datasets",
    "arms",
    "per_class",
    "seeds",
    "train",
    "tune",
    "evaluate",
    "compare",
    "track",
}
_DATASET_KEYS = {"name", "data", "demo", "prepare", "external"}
_ARM_KEYS = {"name", "model", "weights", "pretrain", "options"}
# the options of lowmed evaluate and lowmed compare a study may set (the compared split is the evaluated one)
_EVALUATE_KEYS = {"split", "checkpoint", "threshold", "bootstrap", "tta", "device", "amp", "batch_size", "seed"}
_COMPARE_KEYS = {"metric", "by", "baseline", "resamples", "seed", "pairs"}


@dataclass
class DatasetSpec:
    name: str
    data: str | None = None  # prepared dir or raw dataset
    demo: str | None = None  # target | corpus: lowmed's synthetic demo data
    prepare: dict = field(default_factory=dict)  # options for prepare() when data is raw
    # external test sets: every image a test image, every run of this dataset evaluated on each
    external: list["DatasetSpec"] = field(default_factory=list)


@dataclass
class ArmPretraining:
    """An arm's ``pretrain:``: its corpus, and the TrainConfig options of a supervised pretraining or the
    PretrainConfig options (with a method) of a self-supervised one on unlabelled images."""

    dataset: DatasetSpec
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> str | None:
        """The self-supervised method (moco, simclr); None for a supervised pretraining."""
        return self.options.get("method")


@dataclass
class Arm:
    name: str
    model: str
    weights: str = "none"  # none | imagenet | PATH | RUN_DIR; replaced by the pretrain run when pretrain is set
    pretrain: ArmPretraining | None = None
    options: dict = field(default_factory=dict)  # TrainConfig options for this arm only

    @property
    def self_supervised(self) -> bool:
        """Model D: pretrained by lowmed without labels, on the user's own images."""
        return self.pretrain is not None and self.pretrain.method is not None


@dataclass
class Study:
    name: str
    out: Path
    datasets: list[DatasetSpec]
    arms: list[Arm]
    per_class: list[int]
    seeds: list[int]
    train: dict = field(default_factory=dict)
    tune: TuneSettings | None = None  # every arm tuned with the same budget before its runs
    evaluate: dict = field(default_factory=dict)
    compare: dict = field(default_factory=dict)
    publish: Path | None = None  # where the report, the comparison and each run's small files are copied
    # compare: pairs: the primary family as (a, b) arm pairs, each a − b at every N (default: every arm against the
    # baseline); for a study whose question is not "against one baseline", e.g. B − A at each resolution
    pairs: list[tuple[str, str]] = field(default_factory=list)
    notes: str = ""  # what the reader of the report needs to know first: choices made, what was traded
    variables: dict[str, str] = field(default_factory=dict)  # the environment variables its file names, as set
    track: TrackSettings | None = None  # each run and the study logged to MLflow (experiment: the study's name)

    @property
    def folder(self) -> StudyDir:
        return StudyDir(self.out)

    @property
    def split(self) -> str:
        """The split every run is evaluated and compared on."""
        return str(self.evaluate.get("split", "test"))


def load_study(path: str | os.PathLike) -> Study:
    """Read and check ``path``; nothing is prepared or trained here."""
    path = Path(path)
    raw = _checked_keys(read_yaml(path), _STUDY_KEYS, str(path))
    for key in ("datasets", "arms", "per_class", "seeds"):
        if not isinstance(raw.get(key), list) or not raw[key]:
            raise LowmedError(f"{path}: {key} must be a non-empty list")
    datasets = [_dataset_spec(d, f"{path}: datasets[{i}]") for i, d in enumerate(raw["datasets"])]
    arms = [_arm(values, f"{path}: arms[{i}]", i) for i, values in enumerate(raw["arms"])]
    for key in ("per_class", "seeds"):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in raw[key]):
            raise LowmedError(f"{path}: {key} must be a list of whole numbers")
        repeated = first_repeated(raw[key])
        if repeated is not None:
            raise LowmedError(f"{path}: {key} lists {repeated} twice; each run would be planned twice into one run dir")
    if any(n < 1 for n in raw["per_class"]):
        raise LowmedError(f"{path}: per_class sizes must be at least 1")
    for seed in raw["seeds"]:
        check_seed(seed, f"{path}: seeds:")
    shared = dict(raw.get("train") or {})
    TrainConfig.from_dict({**shared, "data": "."}, source=f"{path}: train").validate()  # field-named errors now
    for arm in arms:
        TrainConfig.from_dict({**shared, **arm.options, "data": "."}, source=f"{path}: arm {arm.name} options")
    tune = _tune_settings(raw.get("tune"), shared, arms, f"{path}: tune")
    study = Study(
        name=str(raw.get("name", path.stem)),
        out=Path(_expand(str(raw.get("out", f"runs/{path.stem}")), f"{path}: out")),
        datasets=datasets,
        arms=arms,
        per_class=sorted(raw["per_class"]),
        seeds=list(raw["seeds"]),
        train=shared,
        tune=tune,
        evaluate=dict(_checked_keys(raw.get("evaluate") or {}, _EVALUATE_KEYS, f"{path}: evaluate")),
        compare=_compare_options(raw.get("compare") or {}, f"{path}: compare"),
        pairs=_pairs((raw.get("compare") or {}).get("pairs"), f"{path}: compare.pairs"),
        notes=str(raw.get("notes") or "").strip(),
        publish=Path(_expand(str(raw["publish"]), f"{path}: publish")) if raw.get("publish") else None,
        track=_track_settings(raw.get("track"), str(raw.get("name", path.stem)), f"{path}: track"),
        variables={
            name: os.environ[name]
            for name in dict.fromkeys(_VARIABLE.findall(path.read_text(encoding="utf-8")))
            if name in os.environ
        },
    )
    _check_whole(study, path)
    return study


def _track_settings(values: Any, study: str, where: str) -> TrackSettings | None:
    """``track: mlflow`` or ``track: {to: mlflow, uri: ..., experiment: ...}`` (the experiment: the study's name)."""
    if values is None:
        return None
    if isinstance(values, str):
        values = {"to": values}
    if not isinstance(values, dict):
        raise LowmedError(f"{where}: expected mlflow, or a mapping {{to: mlflow, uri: ..., experiment: ...}}")
    if values.get("uri") is not None:
        values = {**values, "uri": _expand(str(values["uri"]), f"{where}.uri")}
    settings = TrackSettings.from_dict({"experiment": study, **values}, where)
    settings.check(where)
    return settings


def _tune_settings(values: Any, shared: dict, arms: list[Arm], where: str) -> TuneSettings | None:
    """The ``tune:`` mapping, checked against every arm's options (each bound and choice must make a valid run)."""
    if values is None:
        return None
    if isinstance(values, dict) and values.get("storage") is not None:
        values = {**values, "storage": _expand(str(values["storage"]), f"{where}.storage")}
    for arm in arms:
        TuneSettings.from_dict(values, where, base={**shared, **arm.options})
    return TuneSettings.from_dict(values, where, base=shared)


def _pairs(values: Any, where: str) -> list[tuple[str, str]]:
    if values is None:
        return []
    if not isinstance(values, list) or not all(
        isinstance(pair, list) and len(pair) == 2 and all(isinstance(arm, str) for arm in pair) for pair in values
    ):
        raise LowmedError(f"{where}: expected a list of [a, b] arm pairs (each tested as a − b)")
    repeated = first_repeated([frozenset(pair) for pair in values])
    if repeated is not None:
        raise LowmedError(f"{where}: the pair of {' and '.join(sorted(repeated))} is listed twice; list it once")
    return [(a, b) for a, b in values]


def _compare_options(values: Any, where: str) -> dict:
    """compare_runs' keyword arguments; ``by`` may be written as a list or as "dataset,arm" (``pairs`` is the
    study's own, the primary family it plans)."""
    options = {k: v for k, v in _checked_keys(values, _COMPARE_KEYS, where).items() if k != "pairs"}
    if "by" in options:
        by = options["by"]
        options["by"] = tuple(by.split(",") if isinstance(by, str) else map(str, by))
    return options


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
        raise LowmedError(f"{where}.demo: {quoted(values['demo'])}; expected target or corpus")
    values["name"] = str(values["name"])
    if values.get("data"):
        values["data"] = _expand(str(values["data"]), where)
    external = values.get("external", [])
    if not isinstance(external, list) or any(isinstance(item, dict) and "external" in item for item in external):
        raise LowmedError(f"{where}.external: expected a list of datasets (name, data), none with its own external")
    values["external"] = [_dataset_spec(item, f"{where}.external[{k}]") for k, item in enumerate(external)]
    names = [spec.name for spec in values["external"]]
    if len(set(names)) < len(names) or values["name"] in names:
        raise LowmedError(f"{where}.external: every external set needs a name of its own")
    return DatasetSpec(**values)


def _arm_pretraining(values: Any, where: str) -> ArmPretraining:
    # with a method, a self-supervised stage on unlabelled images (PretrainConfig), else a supervised one
    config = PretrainConfig if isinstance(values, dict) and "method" in values else TrainConfig
    options = dict(_checked_keys(values, {"dataset", *config.__dataclass_fields__}, f"{where}.pretrain"))
    dataset = _dataset_spec(options.pop("dataset", None), f"{where}.pretrain.dataset")
    for name in ("weights", "init"):
        if name in options:
            options[name] = _expand(str(options[name]), f"{where}.pretrain.{name}")
    if config is PretrainConfig:
        fixed = sorted(set(options) & {"data", "target", "out"})
        if fixed:
            raise LowmedError(
                f"{where}.pretrain: {', '.join(fixed)} are set by the study (the corpus is pretrain.dataset, the "
                "target each dataset of the study)"
            )
        PretrainConfig.from_dict(options, f"{where}.pretrain")
    return ArmPretraining(dataset, options)


def _arm(values: Any, where: str, index: int) -> Arm:
    values = _checked_keys(values, _ARM_KEYS, where)
    if "model" not in values:
        raise LowmedError(f"{where} needs a model")
    pretrain = _arm_pretraining(values["pretrain"], where) if values.get("pretrain") is not None else None
    return Arm(
        name=str(values.get("name", f"arm{index + 1}")),
        model=str(values["model"]),
        weights=_expand(str(values.get("weights", "none")), f"{where}.weights"),
        pretrain=pretrain,
        options=dict(values.get("options") or {}),
    )


_VARIABLE = re.compile(r"\$\{(\w+)\}")


def _expand(path: str, where: str) -> str:
    """``${VAR}`` in a study path is the environment variable's value; an unset one is an error."""
    expanded = os.path.expandvars(path)
    if "$" in expanded:
        raise LowmedError(f"{where}: {path!r} names an environment variable that is not set")
    return expanded


def _check_whole(study: Study, path: Path) -> None:
    """What no single field shows: names that collide, models and weights that cannot be had, missing data."""
    from lowmed.models.registry import get_model_spec
    from lowmed.models.weights import resolve_weights, weights_kind

    _check_unique([arm.name for arm in study.arms], f"{path}: arms", "arm")
    _check_unique([spec.name for spec in study.datasets], f"{path}: datasets", "dataset")
    specs = {spec.name: spec for spec in study.datasets}
    for arm in study.arms:
        where = f"{path}: arm {arm.name!r}"
        try:
            model = get_model_spec(arm.model)
            if arm.pretrain is not None and arm.self_supervised:
                weights = arm.pretrain.options.get("init", "auto")
                if importlib.util.find_spec("lightly") is None:
                    raise LowmedError(
                        "its self-supervised pretraining needs lightly; install it with: pip install 'lowmed[ssl]'"
                    )
            elif arm.pretrain is not None:
                weights = {**study.train, **arm.pretrain.options}.get("weights", "none")
            else:
                weights = arm.weights
            weights_kind(resolve_weights(str(weights), model.name), model)
        except LowmedError as exc:
            raise LowmedError(f"{where}: {exc}") from None
        if arm.pretrain is not None:
            corpus = arm.pretrain.dataset
            if specs.setdefault(corpus.name, corpus) != corpus:
                raise LowmedError(
                    f"{where}: pretrain dataset {corpus.name!r} differs from another dataset of that "
                    "name in the study; give it its own name"
                )
    for spec in specs.values():
        if spec.data and not Path(spec.data).expanduser().exists():
            users = [arm.name for arm in study.arms if arm.pretrain and arm.pretrain.dataset.name == spec.name]
            whose = f" (pretraining of arm {', '.join(map(repr, users))})" if users else ""
            raise LowmedError(f"{path}: dataset {spec.name!r}{whose}: data {spec.data} does not exist")
    for spec in study.datasets:
        for external in spec.external:
            where = f"{path}: dataset {spec.name!r}: external set {external.name!r}"
            if specs.setdefault(external.name, external) != external:
                raise LowmedError(f"{where}: another dataset of the study has that name; give it its own")
            if external.data and not Path(external.data).expanduser().exists():
                raise LowmedError(f"{where}: data {external.data} does not exist")
    if study.publish is not None:
        published, out = study.publish.resolve(), study.out.resolve()
        if published.is_relative_to(out) or out.is_relative_to(published):
            raise LowmedError(
                f"{path}: publish {study.publish} and out {study.out} overlap; publish needs a folder of its own "
                f"(e.g. results/{slug(study.name)})"
            )
    if study.split not in ("test", "val", "train"):
        raise LowmedError(f"{path}: evaluate.split {study.split!r}: expected test, val or train")
    names = {arm.name for arm in study.arms}
    for a, b in study.pairs:
        if a not in names or b not in names or a == b:
            raise LowmedError(f"{path}: compare.pairs [{a}, {b}]: expected two different arms of the study")
    baseline = study.compare.get("baseline")
    if baseline is not None and str(baseline) not in {arm.name for arm in study.arms}:
        raise LowmedError(
            f"{path}: compare.baseline {baseline!r} is not an arm; the arms are "
            f"{', '.join(repr(arm.name) for arm in study.arms)}"
        )


def _check_unique(names: list[str], where: str, what: str) -> None:
    """Names must differ, also as they appear in folder names (``A`` and ``a`` would share a run dir)."""
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        other = names[seen.setdefault(slug(name), index)]
        if seen[slug(name)] != index:
            same = "the same name" if other == name else f"names that make the same folder name ({slug(name)!r})"
            raise LowmedError(f"{where}: two {what}s have {same}: {other!r} and {name!r}; give each its own name")
