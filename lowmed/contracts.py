"""The files that pass between lowmed's stages: every file name, and typed readers and writers for the records.

A prepared dir, a subset manifest, a run dir and an eval dir are named here and nowhere else; ``dataset.yaml``,
``train.json`` and ``metrics.json`` are dataclasses with ``read``/``write`` and a ``schema`` version, so that every
reader goes through one place and a later lowmed still reads the files an earlier one wrote (files without
``schema`` are schema 1: for train.json, no arm name, and ``dataset.manifest_sha256`` hashed the subset manifest when
there was one).

This module is light (no torch, no pandas) so that the command line and ``lowmed compare`` can use it freely.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import yaml

from lowmed import locking
from lowmed.errors import LowmedError
from lowmed.io import read_text_file, sha256_file, write_json, write_yaml

SCHEMA = 2  # of train.json and metrics.json as this lowmed writes them

# A prepared dataset dir (lowmed prepare), by default below DEFAULT_PREPARED_ROOT
DEFAULT_PREPARED_ROOT = Path("lowmed-data")
MANIFEST = "manifest.csv"
DATASET_INFO = "dataset.yaml"
SUBSETS = "subsets"
# the subset 'lowmed subsample' last wrote below DEFAULT_PREPARED_ROOT: what 'lowmed train' takes with no DATA
LAST_SUBSET = "last-subset.txt"

# The arm a run belongs to when nobody named it (--arm): derived from its kind of weight source, as lowmed did
# before arms had names.
DERIVED_ARMS: dict[str | None, str] = {
    "none": "A scratch",
    "imagenet": "B ImageNet",
    "xrv": "C medical",
    "run": "C medical",
    "file": "C medical",
    "self-supervised": "D self-supervised",  # a run dir of lowmed pretrain
}


def slug(text: str) -> str:
    """A name (an arm's, a dataset's) as it appears in folder names."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-").lower()


def subset_path(folder: str | os.PathLike, per_class: int, seed: int) -> Path:
    """Where ``lowmed subsample`` puts the subset of ``per_class`` images per class drawn with ``seed``."""
    return Path(folder) / f"subset-{per_class}-seed{seed}.csv"


def subset_sidecar(manifest: str | os.PathLike) -> Path:
    """A subset manifest's sidecar: N, seed and the hash of the manifest it was drawn from."""
    return Path(manifest).with_suffix(".yaml")


def is_prepared(path: Path) -> bool:
    """A prepared dir or a subset manifest (as opposed to a raw dataset)."""
    return (path / MANIFEST).is_file() or (path.suffix == ".csv" and subset_sidecar(path).is_file())


def read_yaml(path: str | os.PathLike, what: str | None = None) -> dict:
    """A YAML file that must hold a mapping; ``what`` names it in errors (default: its path)."""
    path = Path(path)
    what = what or str(path)
    try:
        data = yaml.safe_load(read_text_file(path, what))
    except yaml.YAMLError as exc:
        raise LowmedError(f"{what}: not valid YAML ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(key, str) for key in data):
        raise LowmedError(f"{what}: expected a mapping of names to values")
    return data


class ReadsLikeADict(Mapping):
    """A record that is also a read-only mapping of its fields (``summary["best"]["epoch"]``, ``"model_path" in
    summary``, ``dict(summary)``), as the seed project's API returned dicts. ``ALSO_KEYS``: properties the mapping
    holds too."""

    ALSO_KEYS: ClassVar[tuple[str, ...]] = ()
    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]  # every subclass is a dataclass

    def __getitem__(self, name: str) -> Any:
        if not isinstance(name, str) or name not in self._names():
            raise KeyError(name)
        return getattr(self, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def _names(self) -> tuple[str, ...]:
        return (*(f.name for f in fields(self)), *self.ALSO_KEYS)


@dataclass(kw_only=True)
class SubsetRecord(ReadsLikeADict):
    """A subset manifest's sidecar (``subset-N-seedK.yaml``, written by ``lowmed subsample``): the prepared dataset it
    was drawn from (and that manifest's hash), N, the seed, and what the subset holds."""

    lowmed_version: str = ""
    prepared_dir: str
    source_manifest_sha256: str | None = None
    per_class: int | None = None
    seed: int | None = None
    task: str = ""
    meaning: str = ""  # images per class, or positives per finding (greedy)
    counts: dict = field(default_factory=dict)  # {split: {class or finding: images}}
    images: dict = field(default_factory=dict)  # {split: images}
    train_available: dict = field(default_factory=dict)  # the prepared train split's counts and images
    shortfalls: list[str] = field(default_factory=list)  # classes with fewer than N training images

    def write(self, path: str | os.PathLike) -> None:
        write_yaml(path, asdict(self))

    @classmethod
    def read(cls, path: str | os.PathLike) -> "SubsetRecord":
        values = read_yaml(path)
        if "prepared_dir" not in values:
            raise LowmedError(f"{path}: missing field 'prepared_dir'; expected a sidecar from 'lowmed subsample'")
        return cls(**_known_fields(cls, values))


DATASET_SCHEMA = 1  # of dataset.yaml as this lowmed writes it (files without ``schema`` are 1)
# What a manifest's group (the unit kept whole in one split, and resampled by the bootstrap) is, per source layout:
# a patient, except for HAM10000 (a lesion, several images each) and the generic csv (the user's --group-column)
GROUP_UNITS: dict[str | None, str] = {"ham10000": "lesion", "csv": "group", "unlabelled": "group"}


@dataclass(kw_only=True)
class SplitRecord(ReadsLikeADict):
    """How a prepared dataset's splits came about (``dataset.yaml``'s ``splits``)."""

    origin: dict[str, str]  # {split: given | made | ...}, in split order
    val_rebuilt: str | None = None  # why a given val split was folded into train and made again
    val_fraction: float | None = None  # the shares and floor asked for (not recorded for an external test set)
    test_fraction: float | None = None
    min_val_per_class: int | None = None

    def fraction(self, split: str) -> float | None:
        return {"val": self.val_fraction, "test": self.test_fraction}[split]


@dataclass(kw_only=True)
class DatasetInfo(ReadsLikeADict):
    """A prepared dir's ``dataset.yaml`` (written by ``lowmed prepare``): what its manifest holds, where it came
    from, and how its splits were made; the manifest's hash ties the two files together."""

    schema: int = DATASET_SCHEMA
    lowmed_version: str = ""
    created: str = ""
    task: str  # binary | multiclass | multilabel | unlabelled
    classes: list[str]
    # {format, path, stamp}: the raw dataset it was prepared from; stamp: what it held then (formats.source_stamp)
    source: dict[str, str] = field(default_factory=dict)
    seed: int | None = None
    # full; test: an external test set (every image a test image); unlabelled: images without labels (every one a
    # train row), for self-supervised pretraining
    role: str = "full"
    splits: SplitRecord = field(default_factory=lambda: SplitRecord(origin={}))
    uncertain: str | None = None  # multi-label only: what its uncertain labels (-1) became (prepare --uncertain)
    frontal_only: bool | None = None  # CheXpert only
    cache: dict | None = None  # {size}: the resized copies prepare --cache-size made
    images: dict[str, int] = field(default_factory=dict)  # found, usable, excluded
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # {split: {class or finding: images}}
    groups: dict[str, int] = field(default_factory=dict)  # {split: patients or lesions}
    groups_hashed: bool = False
    group_overlap: dict = field(default_factory=dict)  # {split pair: groups in both} where the source gave both
    leakage_removed: list = field(default_factory=list)  # duplicate images dropped across splits
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    excluded: list[dict[str, str]] = field(default_factory=list)  # {path, reason}
    manifest_sha256: str | None = None

    @property
    def source_format(self) -> str | None:
        return self.source.get("format")

    @property
    def source_path(self) -> str | None:
        return self.source.get("path")

    @property
    def source_stamp(self) -> str | None:
        return self.source.get("stamp")

    @property
    def group_unit(self) -> str:
        return GROUP_UNITS.get(self.source_format, "patient")

    @property
    def uncertain_policy(self) -> str:
        return self.uncertain or "ignore"

    def write(self, path: str | os.PathLike) -> None:
        write_yaml(path, asdict(self))

    @classmethod
    def read(cls, path: str | os.PathLike) -> "DatasetInfo":
        values = read_yaml(path)
        _schema_of(values, DATASET_SCHEMA, path, DATASET_INFO)
        for name in ("task", "classes"):
            if name not in values:
                raise LowmedError(f"{path}: missing field {name!r}; expected a {DATASET_INFO} from 'lowmed prepare'")
        if not isinstance(values["classes"], list) or not all(isinstance(c, str) for c in values["classes"]):
            raise LowmedError(f"{path}: 'classes' must be a list of class names")
        splits = values["splits"] if isinstance(values.get("splits"), dict) else {}
        values["splits"] = _typed(SplitRecord, {"origin": {}, **splits}, f"{path}: splits")
        return _typed(cls, values, str(path))


class Record(ReadsLikeADict):
    """A JSON file as a dataclass: read with its schema checked (older ones upgraded), written atomically."""

    FILE: ClassVar[str]
    NEWEST: ClassVar[int] = SCHEMA  # the newest schema of this file that this lowmed reads and writes

    def to_dict(self) -> dict[str, Any]:
        return {
            name: value
            for name, value in asdict(self).items()
            if not self.__dataclass_fields__[name].metadata.get("transient")
        }

    def write(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def read(cls, path: str | os.PathLike):
        path = Path(path)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise LowmedError(f"{path}: cannot read ({exc.strerror or exc})") from None
        except ValueError as exc:
            raise LowmedError(f"{path}: not valid JSON ({exc}); expected a lowmed {cls.FILE}") from None
        if not isinstance(values, dict):
            raise LowmedError(f"{path}: expected a JSON object; not a lowmed {cls.FILE}")
        return cls.from_dict(values, path)

    @classmethod
    def from_dict(cls, values: dict, path: Path):
        schema = _schema_of(values, cls.NEWEST, path, cls.FILE)
        values = cls._upgraded({**values}, schema, path)
        known = {f.name: f for f in fields(cls)}
        required = [name for name, f in known.items() if f.default is MISSING and f.default_factory is MISSING]
        missing = [name for name in required if name not in values]
        if missing:
            raise LowmedError(f"{path}: missing field(s) {', '.join(missing)}; not a complete lowmed {cls.FILE}")
        return cls(**{name: value for name, value in values.items() if name in known and name != "schema"})

    @classmethod
    def _upgraded(cls, values: dict, schema: int, path: Path) -> dict:
        """``values`` read from a file of ``schema`` in this version's shape, nested records typed."""
        return values


@dataclass
class WeightsReport(ReadsLikeADict):
    """Where a backbone's weights came from and how they matched it (``train.json``'s ``weights``)."""

    source: str  # none | imagenet | xrv | file | run
    path: str | None = None
    sha256: str | None = None
    source_model: str | None = None
    source_preprocessing: dict | None = None
    trained_on: list[str] | None = None  # the public datasets behind the weights, where known (xrv)
    name: str | None = None  # a named weight, e.g. xrv:densenet121-res224-all
    matched: int = 0
    backbone_tensors: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.source == "none":
            return "weights: none (random initialisation)"
        text = (
            f"weights: {self.source} {self.name or self.path or ''} — matched {self.matched}/{self.backbone_tensors} "
            f"backbone tensors, {len(self.missing)} missing, {len(self.unexpected)} unexpected (dropped)"
        )
        if self.shape_mismatch:
            text += f", {len(self.shape_mismatch)} of another shape"
        if self.adapted:
            text += f", {len(self.adapted)} adapted from 1 to 3 input channels"
        return text


@dataclass(kw_only=True)
class DatasetRef(ReadsLikeADict):
    """The data a run trained on. The prepared manifest's hash identifies the dataset; its name is for display."""

    prepared_dir: str
    task: str
    classes: list[str]
    manifest_sha256: str | None  # of the prepared dir's manifest.csv
    subset: str | None = None
    subset_sha256: str | None = None
    per_class: int | None = None
    train_counts: dict | None = None
    val_counts: dict | None = None
    chosen: str | None = None  # how the data was chosen when no DATA was given

    @property
    def name(self) -> str:
        return Path(self.prepared_dir).name

    @property
    def identity(self) -> str:
        """The prepared manifest's hash (of the dir's path for an old run whose manifest is gone)."""
        return self.manifest_sha256 or hashlib.sha256(str(Path(self.prepared_dir).resolve()).encode()).hexdigest()


@dataclass(kw_only=True)
class BestEpoch(ReadsLikeADict):
    """The epoch whose weights are ``best.pt`` (``train.json``'s ``best``), and why: its monitored value."""

    epoch: int
    phase: str
    monitor: str  # val_loss | val_auroc | val_accuracy, or a pretraining monitor (knn_auroc, ...)
    value: float
    metrics: dict[str, float] = field(default_factory=dict)  # the validation metrics of that epoch


@dataclass(kw_only=True)
class TrainSummary(Record):
    """``train.json``: what a run is (arm, model, weights, data, seed) and how it went (status, best epoch, time)."""

    FILE: ClassVar[str] = "train.json"
    ALSO_KEYS: ClassVar[tuple[str, ...]] = ("model_path",)  # the seed project's train_model() returned it

    schema: int = SCHEMA
    run_dir: str
    created: str
    arm: str
    model: str
    parameters: int
    weights: WeightsReport
    weight_source: str
    dataset: DatasetRef
    seed: int
    preprocessing: dict
    device: str
    device_name: str
    cpu_threads: int | None = None
    amp: bool = False
    processes: int = 1
    global_batch_size: int | None = None
    versions: dict = field(default_factory=dict)
    # running | interrupted | failed | completed | pruned (a tuning trial stopped early); read as killed when it says
    # running and no process owns the run dir (the system killed it, or the machine stopped)
    status: str = "running"
    error: str | None = None
    # supervised, or self-supervised: a lowmed pretrain run on an unlabelled corpus (its own record: pretrain.json),
    # whose backbone other runs start from and which is no run of a comparison
    kind: str = "supervised"
    tuning_trial: int | None = None  # the trial's number when the run is one of a tuning cell's trials
    # weights whose training data is known: status possible | none known | unknown | none (checked image by image),
    # those datasets, the target (lowmed.data.leakage for a lowmed run's weights)
    pretraining_overlap: dict | None = None
    phases: list[str] = field(default_factory=list)
    epochs_run: int = 0
    best: BestEpoch | None = None
    wall_seconds: float | None = None
    resumed: bool = False
    epoch_seconds_total: float | None = None
    train_images_per_s: dict = field(default_factory=dict)
    precision: str | None = None
    caches: dict = field(default_factory=dict)  # per phase: the cache's boundary, views, dtype, size; or why none
    unreadable_files: dict = field(default_factory=dict)

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    @property
    def status_label(self) -> str:
        return "failed (killed)" if self.status == "killed" else self.status

    @property
    def best_epoch(self) -> BestEpoch:
        """The best epoch of a run that trained at least one."""
        if self.best is None:
            raise LowmedError(f"{self.run_dir}: the run has no best epoch ({self.status_label}, no epoch finished)")
        return self.best

    @property
    def model_path(self) -> str:
        """The best checkpoint (the seed project's ``train_model`` returned it)."""
        return str(RunDir(self.run_dir).best)

    @classmethod
    def _upgraded(cls, values: dict, schema: int, path: Path) -> dict:
        dataset = dict(values.get("dataset") or {})
        if schema == 1:
            values.setdefault("arm", DERIVED_ARMS.get(values.get("weight_source"), values.get("weight_source")))
            if dataset.get("subset"):  # schema 1 hashed the manifest it loaded: the subset's
                dataset["subset_sha256"] = dataset.get("manifest_sha256")
                dataset["manifest_sha256"] = _prepared_manifest_sha256(dataset)
        values["dataset"] = _typed(DatasetRef, dataset, f"{path}: dataset")
        values["weights"] = _typed(WeightsReport, values.get("weights") or {}, f"{path}: weights")
        if values.get("best"):
            values["best"] = _typed(BestEpoch, values["best"], f"{path}: best")
        return values


def _prepared_manifest_sha256(dataset: dict) -> str | None:
    """For an old run: the hash of its prepared manifest, from the subset's sidecar or the manifest itself."""
    sidecar = subset_sidecar(dataset["subset"])
    if sidecar.is_file():
        recorded = SubsetRecord.read(sidecar).source_manifest_sha256
        if recorded:
            return recorded
    manifest = Path(dataset.get("prepared_dir", "")) / MANIFEST
    return sha256_file(manifest) if manifest.is_file() else None


def _schema_of(values: dict, newest: int, path: str | os.PathLike, what: str) -> int:
    """A record's schema version (1 where it has none); one this lowmed cannot read is refused."""
    schema = values.get("schema", 1)
    if not isinstance(schema, int) or schema < 1:
        raise LowmedError(f"{path}: schema {schema!r} is not a version number; not a lowmed {what}")
    if schema > newest:
        raise LowmedError(
            f"{path}: written by a newer lowmed (schema {schema}; this one reads up to {newest}); "
            "upgrade lowmed to read it"
        )
    return schema


def _typed(cls, values: dict, where: str):
    try:
        return cls(**_known_fields(cls, values))
    except TypeError as exc:
        raise LowmedError(f"{where}: incomplete ({exc})") from None


def _undefined_as_default(cls, values: dict) -> dict:
    """JSON holds an undefined number (NaN, infinity) as null: read it back as the field's default."""
    defaults = {f.name: f.default for f in fields(cls) if isinstance(f.default, float)}
    return {name: defaults[name] if value is None and name in defaults else value for name, value in values.items()}


def _known_fields(cls, values: dict) -> dict:
    """The entries of ``values`` that are fields of ``cls``: what a later lowmed added is left out."""
    known = {f.name for f in fields(cls)}
    return {name: value for name, value in values.items() if name in known}


GROUPS = "patient/lesion group"


@dataclass
class CorpusOverlap(ReadsLikeADict):
    """``pretrain.json``'s ``leakage`` (``lowmed.data.leakage``): what the images behind a pretrained model share with
    its target — per target split, images identical to a target image (by content hash) and images of a target
    group — and how many of the target's train images were among them. Any val or test overlap is refused, so a
    record holds none (one written before the guard refused held ``removed``, always 0 in a published record)."""

    target: str  # the target's prepared dir (its name)
    target_manifest_sha256: str | None
    by_hash: dict[str, int] = field(default_factory=dict)
    by_group: dict[str, int] = field(default_factory=dict)
    kept_from_train: int = 0  # pretraining images that are (or share a group with) the target's train images
    examples: list[str] = field(default_factory=list)

    def sentence(self) -> str:
        return (
            f"the leakage guard against {self.target}: no image or {GROUPS} shared with its val or test split; "
            f"{self.kept_from_train} shared with its train split, kept"
        )


@dataclass(kw_only=True)
class SelfSupervisedRecord(Record):
    """``pretrain.json`` of a self-supervised run (``lowmed pretrain``, a study arm's ``pretrain: {method: ...}``):
    the method and its views, the corpus and the target by their manifests' SHA-256, what the leakage guard found,
    and the monitor's curve (a kNN on the target's val split, epoch 0 being the starting weights)."""

    FILE: ClassVar[str] = "pretrain.json"

    schema: int = SCHEMA
    method: str  # simclr | moco
    model: str
    init: dict  # the starting weights: source, name or file, SHA-256
    views: dict  # crop_min, rotation, intensity, flip
    corpus: dict  # prepared_dir, manifest_sha256, images, used, groups
    target: dict  # prepared_dir, manifest_sha256, monitor split and its images
    leakage: CorpusOverlap
    monitor: dict  # what it is (kNN, k, leave-one-out on val), its metric, and the curve: epoch → value
    epochs: int
    best_epoch: int | None = None
    best_value: float | None = None
    images_per_s: float | None = None
    seconds: float | None = None

    @classmethod
    def _upgraded(cls, values: dict, schema: int, path: Path) -> dict:
        values["leakage"] = _typed(CorpusOverlap, values.get("leakage") or {}, f"{path}: leakage")
        return values


@dataclass(kw_only=True)
class PredictionRecord(Record):
    """``predictions.json``, beside a ``lowmed predict`` table (``<name>.csv`` → ``<name>.json``): where its numbers
    came from — lowmed, the run and checkpoint (SHA-256), the model and its input, the threshold and its source —
    so that the table itself stays a plain CSV any tool reads."""

    FILE: ClassVar[str] = "predictions.json"

    schema: int = SCHEMA
    lowmed_version: str
    created: str
    table: str  # the CSV it describes (its file name)
    run: str | None
    checkpoint: dict  # path, epoch, sha256
    model: str
    task: str
    classes: list[str]
    input_size: int
    tta: bool
    threshold: float | list[float] | None
    threshold_source: str
    images: int
    unreadable: int
    run_status: str | None = None  # the run's status when it did not finish

    @staticmethod
    def beside(table: str | os.PathLike) -> Path:
        return Path(table).with_suffix(".json")


@dataclass(kw_only=True)
class EvalReport(Record):
    """``metrics.json``: one checkpoint evaluated on one split, with 95 % intervals."""

    FILE: ClassVar[str] = "metrics.json"

    schema: int = SCHEMA
    task: str
    split: str
    n: int
    classes: list[str]
    positive_class: str | None = None  # binary tasks: the class whose probability is thresholded
    threshold: float | list[float] | None = None
    threshold_source: str = "fixed"
    metrics: dict[str, float]
    ci95: dict[str, list[float | None]] = field(default_factory=dict)  # None where the bootstrap gave none
    per_class: dict[str, dict] = field(default_factory=dict)
    confusion_matrix: list[list[int]] | None = None
    bootstrap: dict = field(default_factory=dict)
    checkpoint: dict = field(default_factory=dict)
    dataset: dict = field(default_factory=dict)  # prepared_dir, external
    absent_classes: list[str] = field(default_factory=list)  # the model's classes the evaluated set lacks
    class_map: dict[str, str] = field(default_factory=dict)  # --class-map: the set's class → the model's
    tta: bool = False
    device: str = ""
    precision: str = "off"  # bfloat16 | float16 | off
    seconds: float = 0.0
    images_per_s: float = 0.0
    lowmed_version: str = ""
    out: str | None = field(default=None, metadata={"transient": True})  # the eval dir it was read from or written to

    @classmethod
    def read(cls, path: str | os.PathLike) -> "EvalReport":
        report = super().read(path)
        report.out = str(Path(path).parent)
        return report

    @property
    def folder(self) -> EvalDir:
        """The eval dir this report was read from or written to."""
        if self.out is None:
            raise LowmedError("this evaluation was never saved: it has no folder of files")
        return EvalDir(Path(self.out))


@dataclass(frozen=True)
class EvalDir:
    """``RUN/eval/<split>/`` (or an external set's): metrics.json, metrics.csv, predictions.csv, plots."""

    path: Path

    @property
    def metrics(self) -> Path:
        return self.path / EvalReport.FILE

    @property
    def metrics_table(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def predictions(self) -> Path:
        return self.path / "predictions.csv"

    def plot(self, name: str) -> Path:
        """A PNG: roc, pr, confusion or reliability."""
        return self.path / f"{name}.png"

    @property
    def explanations(self) -> "ExplainDir":
        """``lowmed evaluate --explain``'s maps of this evaluation's most confident right and wrong calls."""
        return ExplainDir(self.path / "explain")

    def exists(self) -> bool:
        return self.metrics.is_file()

    def read_report(self) -> EvalReport:
        return EvalReport.read(self.metrics)


@dataclass(kw_only=True)
class ExplainRecord(Record):
    """``explain.json``: one saliency method applied to a set of images by one checkpoint, with the
    model-randomisation check of its maps."""

    FILE: ClassVar[str] = "explain.json"

    schema: int = SCHEMA
    method: str
    layer: str | None  # the backbone layer Grad-CAM / Grad-CAM++ explain; None for input-space methods
    model: str
    checkpoint: dict  # path, epoch, sha256
    images: int
    # Spearman ρ between the trained network's maps and a re-initialised one's (mean over images), the same
    # between two re-initialised networks, whether the maps barely change, and the sentence that says so
    randomisation: dict
    seconds: float
    lowmed_version: str


@dataclass(frozen=True)
class ExplainDir:
    """Saliency maps as written: explain.json, index.csv (one row per image), maps.npz and one PNG per image."""

    path: Path

    @property
    def record(self) -> Path:
        return self.path / ExplainRecord.FILE

    @property
    def index(self) -> Path:
        return self.path / "index.csv"

    @property
    def maps(self) -> Path:
        return self.path / "maps.npz"

    def exists(self) -> bool:
        return self.record.is_file()

    def read(self) -> ExplainRecord:
        return ExplainRecord.read(self.record)


@dataclass(kw_only=True)
class Trial(ReadsLikeADict):
    """One trial of a tuning cell, as ``tuning.json`` records it."""

    number: int
    state: str  # complete | pruned | fail | running
    counted: bool  # one of the budget's first finished trials
    value: float | None  # the metric of its best epoch on the validation split
    params: dict[str, Any]
    epochs: int | None = None
    seconds: float | None = None
    outcome: str | None = None  # why it was pruned


@dataclass(kw_only=True)
class TuningRecord(Record):
    """``tuning.json``: one tuning cell's trials and the values chosen (``lowmed tune``, a study's ``tune:``).

    Written in the cell's folder, and copied into every run trained with its values, so that a run dir alone
    says which of its options were tuned, on what, and with how many trials.
    """

    FILE: ClassVar[str] = "tuning.json"

    schema: int = SCHEMA
    cell: str
    optuna_study: str  # the study's name in the storage
    storage: str  # the storage URL, without a password
    metric: str  # val_loss | val_auroc | val_accuracy, of each trial's best epoch on the validation split
    direction: str  # minimize | maximize
    budget: int  # trials counted (completed or pruned); the same for every arm of a study
    space: dict  # the search space as given
    # every trial in number order; trials that failed or ran beyond the budget are not counted
    trials: list[Trial]
    chosen: dict  # the best completed trial's values
    best_trial: int
    best_value: float
    seconds: float  # the counted trials' training time, summed

    @property
    def counted(self) -> list[Trial]:
        return [trial for trial in self.trials if trial.counted]

    @classmethod
    def _upgraded(cls, values: dict, schema: int, path: Path) -> dict:
        values["trials"] = [_typed(Trial, trial, f"{path}: trials") for trial in values.get("trials") or []]
        return values

    def chosen_text(self) -> str:
        return ", ".join(f"{name}={short_value(value)}" for name, value in self.chosen.items())

    def recipe(self) -> str:
        """The chosen values in a line (a table's "recipe" column)."""
        return f"tuned: {self.chosen_text()}"


def short_value(value: Any) -> str:
    """A tuned value as tables show it (floats to 3 significant digits)."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class RunDir:
    """A run dir: config.yaml, history.csv, best.pt, last.pt, train.json and eval/."""

    path: Path

    def __init__(self, path: str | os.PathLike) -> None:
        object.__setattr__(self, "path", Path(path))

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def history(self) -> Path:
        return self.path / "history.csv"

    @property
    def best(self) -> Path:
        return self.path / "best.pt"

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    @property
    def summary(self) -> Path:
        return self.path / TrainSummary.FILE

    @property
    def self_supervised(self) -> Path:
        """A self-supervised run's own record (absent for a supervised run)."""
        return self.path / SelfSupervisedRecord.FILE

    @property
    def tuning(self) -> Path:
        """Where the tuning that chose this run's options is recorded (absent for a run not tuned)."""
        return self.path / TuningRecord.FILE

    def read_tuning(self) -> TuningRecord | None:
        return TuningRecord.read(self.tuning) if self.tuning.is_file() else None

    def checkpoint(self, which: str) -> Path:
        """``best`` or ``last``."""
        return self.best if which == "best" else self.last

    def evaluation(self, split: str, external: str | None = None) -> EvalDir:
        """The eval dir of ``split``; of another prepared dataset's split when ``external`` names it."""
        return EvalDir(self.path / "eval" / (f"external-{external}-{split}" if external else split))

    def evaluations(self) -> list[EvalDir]:
        """Every saved evaluation of the run, in name order."""
        return [EvalDir(path.parent) for path in sorted((self.path / "eval").glob(f"*/{EvalReport.FILE}"))]

    def read_summary(self) -> TrainSummary:
        """train.json; a run that says it is running while no other process owns the run dir was killed."""
        summary = TrainSummary.read(self.summary)
        if summary.status == "running" and not locking.in_use_by_another(self.path):
            summary.status = "killed"
            summary.error = (
                "the process ended without recording why (killed by the system, e.g. for memory, or the machine "
                f"stopped); continue with: lowmed train --resume {self.path}"
            )
        return summary

    def state(self) -> str:
        """new | resumable | completed: what ``lowmed experiment`` does with it."""
        if not self.summary.is_file():
            return "resumable" if self.last.is_file() else "new"
        status = self.read_summary().status
        if status == "completed":
            return "completed"
        return "resumable" if self.last.is_file() and status != "failed" else "new"  # killed: resumable


def find_run_dirs(paths: Sequence[str | os.PathLike]) -> list[RunDir]:
    """Every run dir at or below ``paths`` (a folder holding a train.json), each once, in path order."""
    found: set[Path] = set()
    for path in map(Path, paths):
        if not path.exists():
            raise LowmedError(f"{path}: no such folder of runs")
        found.update(summary.parent for summary in path.rglob(TrainSummary.FILE))
    return [RunDir(path) for path in sorted(found)]


# The families of paired tests (compare.json's rows' ``family``): Holm's correction runs within each.
PRIMARY = "primary"  # every arm against the baseline, over every N: the comparisons a study is planned to answer
SECONDARY = "secondary"  # the other pairs of arms
SENSITIVITY = "sensitivity"  # the two-level bootstrap beside the primary test (ten or more seeds)
DESCRIPTIVE = "descriptive"  # per-seed DeLong / McNemar: one trained model against another, not two pipelines
# The primary test: the seed-averaged difference with Var = SE_pat² + SD_seed²/n, t with Welch–Satterthwaite df
PRIMARY_TEST = "seeds + test set, t (Satterthwaite)"
TWO_LEVEL_TEST = "two-level bootstrap (seeds × patients)"
# the primary test as stats.csv names it, in files of this lowmed and in those compared before the test carried the
# variance between seeds (compare.json schema 2: a paired bootstrap over patients of the seed-averaged difference)
PRIMARY_TESTS = (PRIMARY_TEST, "paired bootstrap (seed-averaged)")


@dataclass(kw_only=True)
class Estimate(ReadsLikeADict):
    """A metric's mean over seeds with its 95 % interval from both sources of variance (see
    ``lowmed.comparison.statistics``); with one seed, the test set's alone."""

    mean: float
    ci_low: float
    ci_high: float
    sd_seed: float = float("nan")
    se_patient: float = float("nan")
    df: float = float("inf")


@dataclass(kw_only=True)
class RunRow(ReadsLikeADict):
    """One run in a comparison (a row of compare.csv): its headline metric with the run's own bootstrap interval,
    and its calls at the evaluation's threshold."""

    run: str
    dataset: str
    dataset_sha256: str
    task: str
    arm: str
    model: str
    weights: str
    per_class: int | None
    seed: int
    metric: str
    value: float
    ci_low: float | None  # None where the run's evaluation had no interval
    ci_high: float | None
    accuracy: float = float("nan")
    balanced_accuracy: float = float("nan")
    sensitivity: float = float("nan")  # binary tasks
    specificity: float = float("nan")
    ece: float = float("nan")
    threshold: str = ""  # the evaluation's threshold, as it was applied ("0.5", "0.431"; "" for most probable)
    threshold_source: str = ""  # fixed | youden on the val split | most probable class
    n_test: int = 0
    train_seconds: float = float("nan")
    epochs: int = 0
    recipe: str = "fixed"
    pretraining_overlap: str = "not known"
    not_learned: str = ""

    @property
    def entity(self) -> str:
        return f"{self.arm} · {self.model}"


@dataclass(kw_only=True)
class GroupRow(ReadsLikeADict):
    """An arm's runs aggregated over seeds (a row of groups.csv), keyed by the comparison's ``by`` fields (the
    others None): the headline metric and the calls at the evaluations' threshold, each mean [95 % interval]."""

    dataset: str | None = None
    arm: str | None = None
    model: str | None = None
    per_class: int | None = None
    seed: int | None = None
    weights: str | None = None
    metric: str
    n: int  # runs (seeds)
    value: Estimate
    interval: str  # the kind of interval shown (combined variance, or one run's bootstrap)
    # balanced_accuracy, sensitivity, specificity (binary), ece: at the threshold the evaluations applied
    thresholded: dict[str, Estimate] = field(default_factory=dict)
    threshold_source: str = ""
    train_seconds: float = float("nan")
    recipe: str = "fixed"

    @property
    def entity(self) -> str:
        return f"{self.arm} · {self.model}"

    @classmethod
    def from_dict(cls, values: dict) -> "GroupRow":
        def estimate(value: dict) -> Estimate:
            return Estimate(**_undefined_as_default(Estimate, _known_fields(Estimate, value)))

        values = {**_undefined_as_default(cls, values), "value": estimate(values["value"])}
        values["thresholded"] = {name: estimate(e) for name, e in (values.get("thresholded") or {}).items()}
        return cls(**_known_fields(cls, values))


@dataclass(kw_only=True)
class TestRow(ReadsLikeADict):
    """One paired test between two arms at one N (a row of stats.csv); ``a − b``, the baseline as b.

    The primary test's row carries its parts: the per-seed differences, how many favour each arm, SD_seed, SE_pat,
    the share of the variance from seeds and the df."""

    __test__ = False  # not a pytest class

    dataset: str
    per_class: int | None
    a: str
    b: str
    test: str
    family: str  # primary | secondary | sensitivity | descriptive
    seeds: int  # the seeds paired (1 for a per-seed test)
    seed: int | None = None  # the seed, for a per-seed test
    metric: str
    estimate: float
    ci_low: float = float("nan")
    ci_high: float = float("nan")
    p: float = float("nan")
    p_holm: float = float("nan")
    significant: bool = False
    vs_baseline: bool = False
    per_seed: list[float] = field(default_factory=list)
    favours_a: int | None = None
    favours_b: int | None = None
    sd_seed: float = float("nan")
    se_patient: float = float("nan")
    seed_share: float = float("nan")
    df: float = float("nan")

    @property
    def key(self) -> tuple:
        """The comparison a family member names: dataset, N and the two arms (either order)."""
        return self.dataset, self.per_class, frozenset((self.a, self.b))


@dataclass(kw_only=True)
class FamilyMember(ReadsLikeADict):
    """One planned comparison: arm a against arm b at N images per class of a dataset."""

    dataset: str
    per_class: int | None
    a: str
    b: str

    @property
    def key(self) -> tuple:
        return self.dataset, self.per_class, frozenset((self.a, self.b))


@dataclass(kw_only=True)
class TestFamilies(Record):
    """``families.json``: the paired comparisons a study is planned to make, fixed before any run trains, so that
    Holm's correction covers the study's family whatever one ``lowmed compare`` call happens to contain. Members
    name arms as ``arm · model`` (the compared entities). Without a study, the family is the pairs found."""

    __test__ = False

    FILE: ClassVar[str] = "families.json"

    schema: int = SCHEMA
    source: str  # "study NAME" (fixed when planned) | "the runs compared"
    baseline: str | None
    primary: list[FamilyMember]
    secondary: list[FamilyMember] = field(default_factory=list)

    def family_of(self, row: TestRow) -> str | None:
        for name, members in ((PRIMARY, self.primary), (SECONDARY, self.secondary)):
            if any(member.key == row.key for member in members):
                return name
        return None

    def size(self, family: str) -> int:
        return len(self.primary if family == PRIMARY else self.secondary)

    @classmethod
    def _upgraded(cls, values: dict, schema: int, path: Path) -> dict:
        for name in (PRIMARY, SECONDARY):
            values[name] = [_typed(FamilyMember, member, f"{path}: {name}") for member in values.get(name) or []]
        return values


@dataclass(kw_only=True)
class PowerRow(ReadsLikeADict):
    """The minimum difference a primary comparison can detect at 80 % power (``compare --power``, a study's
    Setup): from its measured SE_pat and SD_seed, at its own seeds and at other counts."""

    dataset: str
    per_class: int | None
    a: str
    b: str
    seeds: int
    se_patient: float
    sd_seed: float
    family_size: int
    detectable: dict[int, float]  # seeds -> minimum detectable difference (Holm's first step, two-sided α 0.05)


@dataclass(kw_only=True)
class SkippedRun(ReadsLikeADict):
    """A run a comparison left out, and why (with the command that would let it in, where there is one)."""

    run: str
    reason: str


@dataclass(kw_only=True)
class Comparison(Record):
    """``compare.json``: every run's value, the seed aggregates and the paired tests, as ``lowmed compare`` made
    them."""

    FILE: ClassVar[str] = "compare.json"
    NEWEST: ClassVar[int] = 3  # 3: typed rows, tests in families, intervals from both sources of variance

    schema: int = 3
    split: str
    metric: str
    baseline: str | None  # the arm every other arm is set against (as a − baseline); None: all pairs as they sort
    runs: list[RunRow]  # compare.csv's rows
    groups: list[GroupRow]  # groups.csv's rows
    comparisons: list[TestRow]  # stats.csv's rows
    families: TestFamilies | None = None  # the families Holm's correction ran within
    skipped: list[SkippedRun] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    recipes: str = ""  # whether the arms were tuned, and alike (compare.recipes_statement)
    overlap: str = ""  # arms whose pretraining may have seen the target's images (compare.overlap_statement)
    learning: str = ""  # runs that did not learn (compare.learning_statement)
    unit: str = "patient"  # what the bootstrap resampled whole: patient | lesion | group | image
    attention: list[dict] = field(default_factory=list)  # compare --explain: explain/<method>/arms.csv's rows
    # the options that made it, so that the same comparison can be made again from the same runs
    by: list[str] = field(default_factory=lambda: ["dataset", "arm", "model", "per_class"])
    resamples: int | None = None
    seed: int | None = None
    external: str | None = None  # the external test set compared on, instead of the runs' own split
    out: str

    def tests(self, family: str) -> list[TestRow]:
        return [row for row in self.comparisons if row.family == family]

    def primary(self) -> list[TestRow]:
        """The primary test of every pair of arms in the primary family, then the secondary family."""
        return [row for row in self.comparisons if row.test == PRIMARY_TEST]

    def relocated(self, runs: str, out: str) -> Comparison:
        """The same comparison of the same runs, copied into the folder ``runs`` (found there by their folder names),
        with its files in ``out``: a study's published record, which ``lowmed compare`` on it makes again."""

        def moved(run: str) -> str:
            return str(Path(runs) / Path(run).name)

        return replace(
            self,
            runs=[replace(row, run=moved(row.run)) for row in self.runs],
            # a skipped run's reason names it too (the command that would evaluate it)
            skipped=[
                SkippedRun(run=moved(entry.run), reason=entry.reason.replace(entry.run, moved(entry.run)))
                for entry in self.skipped
            ],
            figures=[str(Path(out) / Path(figure).name) for figure in self.figures],
            out=out,
        )

    def options(self) -> dict:
        """compare_runs' keyword arguments that make this comparison again (an older record's unknowns left out)."""
        options = {"split": self.split, "metric": self.metric, "baseline": self.baseline, "by": tuple(self.by)}
        return options | {
            name: value
            for name, value in (("resamples", self.resamples), ("seed", self.seed), ("external", self.external))
            if value is not None
        }

    @classmethod
    def _upgraded(cls, values: dict, schema: int, path: Path) -> dict:
        values["skipped"] = [_typed(SkippedRun, entry, f"{path}: skipped") for entry in values.get("skipped", [])]
        if schema < 3:  # untyped rows, tests without families: read as they were, for the attention section
            values["runs"], values["groups"], values["comparisons"] = [], [], []
            return values
        values["runs"] = [_typed(RunRow, _undefined_as_default(RunRow, row), f"{path}: runs") for row in values["runs"]]
        values["groups"] = [GroupRow.from_dict(row) for row in values["groups"]]
        values["comparisons"] = [
            _typed(TestRow, _undefined_as_default(TestRow, row), f"{path}: comparisons")
            for row in values["comparisons"]
        ]
        if values.get("families") is not None:
            values["families"] = TestFamilies.from_dict(values["families"], path)
        return values


@dataclass(kw_only=True)
class StudyLog(Record):
    """``study.json`` in a study's folder: every invocation of ``lowmed experiment`` and how long it took, so that a
    report written by a later invocation (one that found every run done) still says what the whole study cost."""

    FILE: ClassVar[str] = "study.json"

    schema: int = SCHEMA
    study: str  # the study's name
    invocations: list[dict] = field(default_factory=list)  # started (UTC, ISO 8601), seconds, processes, worked

    @property
    def seconds(self) -> float:
        return sum(invocation["seconds"] for invocation in self.invocations)


@dataclass(frozen=True)
class StudyDir:
    """A study's folder (its ``out:``), or its published record (``publish:``, the same names without checkpoints):
    the one place its layout is spelt. Its tables are a ComparisonDir of the same folder."""

    path: Path

    @property
    def runs(self) -> Path:
        return self.path / "runs"

    def run(self, name: str) -> Path:
        return self.runs / name

    def pretrain_stage(self, name: str) -> Path:
        return self.path / "pretrain" / name

    @property
    def tuning(self) -> Path:
        return self.path / "tuning"

    @property
    def subsets(self) -> Path:
        return self.path / SUBSETS

    def subset(self, dataset: str, per_class: int, seed: int) -> Path:
        return subset_path(self.subsets / slug(dataset), per_class, seed)

    def prepared(self, dataset: str) -> Path:
        return self.path / "data" / slug(dataset)

    def raw(self, dataset: str) -> Path:
        """Where a demo dataset is generated before it is prepared."""
        return self.path / "data" / "raw" / slug(dataset)

    @property
    def claims(self) -> Path:
        """Under torchrun: which process took which grid run."""
        return self.path / ".claims"

    @property
    def report(self) -> Path:
        return self.path / "report.md"

    @property
    def study_file(self) -> Path:
        """The study's YAML as it was run (in a published record)."""
        return self.path / "study.yaml"

    @property
    def tables(self) -> ComparisonDir:
        return ComparisonDir(self.path)


@dataclass(frozen=True)
class ComparisonDir:
    """Where ``lowmed compare`` writes: compare.csv/.json/.md, stats.csv and one learning curve per dataset."""

    path: Path

    @property
    def table(self) -> Path:
        return self.path / "compare.csv"

    @property
    def record(self) -> Path:
        return self.path / Comparison.FILE

    @property
    def markdown(self) -> Path:
        return self.path / "compare.md"

    @property
    def stats(self) -> Path:
        return self.path / "stats.csv"

    @property
    def groups(self) -> Path:
        """The seed aggregates: each arm's mean and interval per N (GroupRow, flattened)."""
        return self.path / "groups.csv"

    @property
    def power(self) -> Path:
        """``compare --power``: the minimum detectable difference of each primary comparison."""
        return self.path / "power.csv"

    @property
    def families(self) -> Path:
        """A study's planned families of tests, where the runs compared belong to one."""
        return self.path / TestFamilies.FILE

    def learning_curve(self, dataset: str) -> Path:
        return self.path / f"learning_curve_{dataset}.png"

    def explanations(self, method: str) -> Path:
        """``--explain``'s grids (a PNG per image) and arms.csv."""
        return self.path / "explain" / method
