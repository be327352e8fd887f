"""The prepared-dataset contract: ``manifest.csv`` + ``dataset.yaml``, and subset manifests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lowmed.contracts import DATASET_INFO, MANIFEST, DatasetInfo, SubsetRecord, subset_sidecar
from lowmed.data.formats import SPLITS
from lowmed.errors import LowmedError
from lowmed.io import sha256_file

NO_FINDING = "(no finding)"
UNLABELLED = "(unlabelled)"  # the one bucket of an unlabelled corpus's counts


@dataclass
class PreparedDataset:
    """A prepared dataset dir (or one of its subset manifests) loaded into memory."""

    root: Path  # the prepared dir: relative paths in the manifest are relative to it
    info: DatasetInfo  # dataset.yaml
    manifest: pd.DataFrame
    manifest_path: Path
    subset: SubsetRecord | None = None  # the subset sidecar, when this is a subset manifest

    @property
    def task(self) -> str:
        return self.info.task

    @property
    def classes(self) -> list[str]:
        return list(self.info.classes)

    @property
    def label_columns(self) -> list[str]:
        return label_columns(self.task, self.classes)

    @classmethod
    def load(cls, location: str | Path) -> "PreparedDataset":
        """Load a prepared dir, or a subset manifest CSV written by ``subsample``."""
        location = Path(location).expanduser()
        if location.is_dir():
            return cls._load_dir(location)
        if location.is_file() and location.suffix == ".csv":
            sidecar_path = subset_sidecar(location)
            if not sidecar_path.is_file():
                raise LowmedError(f"{location}: subset manifest without its sidecar {sidecar_path.name}")
            sidecar = SubsetRecord.read(sidecar_path)
            dataset = cls._load_dir(Path(sidecar.prepared_dir))
            expected = sidecar.source_manifest_sha256
            if expected and expected != sha256_file(dataset.manifest_path):
                raise LowmedError(
                    f"{location}: drawn from another version of {dataset.root} (its manifest changed "
                    "since); draw the subset again with 'lowmed subsample'"
                )
            return cls(dataset.root, dataset.info, _read_manifest(location, dataset.info), location, sidecar)
        raise LowmedError(f"{location}: not a prepared dataset dir or subset manifest (.csv)")

    @classmethod
    def _load_dir(cls, root: Path) -> "PreparedDataset":
        manifest_path = root / MANIFEST
        if not manifest_path.is_file() or not (root / DATASET_INFO).is_file():
            raise LowmedError(
                f"{root}: not a prepared dataset (expected {MANIFEST} and {DATASET_INFO}; run 'lowmed prepare' first)"
            )
        info = read_info(root)
        return cls(root.resolve(), info, _read_manifest(manifest_path, info), manifest_path.resolve())

    def image_paths(self, frame: pd.DataFrame | None = None, prefer_cache: bool = True) -> list[Path]:
        """Absolute paths to read, the resized cache copy where ``prepare --cache-size`` made one."""
        frame = self.manifest if frame is None else frame
        column = frame["path"]
        if prefer_cache and "cache_path" in frame:
            column = frame["cache_path"].where(frame["cache_path"].notna(), column)
        return [p if p.is_absolute() else self.root / p for p in map(Path, column)]

    def split(self, name: str) -> pd.DataFrame:
        """The rows of split ``name`` (train, val or test), or every row for ``all``."""
        rows = self.manifest if name == "all" else self.manifest[self.manifest["split"] == name]
        return rows.reset_index(drop=True)

    @property
    def source_path(self) -> str | None:
        """The raw dataset (folder or CSV) it was prepared from."""
        return self.info.source_path

    @property
    def source_format(self) -> str | None:
        """The layout it was read in (``prepare --format``)."""
        return self.info.source_format

    @property
    def role(self) -> str:
        """full, or test: a dataset prepared as an external test set (every image a test image)."""
        return self.info.role

    def check_trainable(self) -> "PreparedDataset":
        """This dataset, unless it is an external test set, which has nothing to train or subsample, or an unlabelled
        corpus, which only self-supervised pretraining uses."""
        if self.role == "unlabelled":
            raise LowmedError(
                f"{self.root}: an unlabelled corpus (--role unlabelled) has no labels to train on; pretrain on it with "
                "'lowmed pretrain', then train on a labelled dataset from that run"
            )
        if self.role == "test":
            raise LowmedError(
                f"{self.root}: prepared as an external test set (--role test), so it has no training images; "
                "evaluate runs on it, or prepare it again without --role test to train on it"
            )
        return self


def read_info(root: str | Path) -> DatasetInfo:
    """A prepared dir's ``dataset.yaml`` alone (task, classes, counts, splits, uncertain policy), for readers
    that do not need its manifest."""
    info_path = Path(root) / DATASET_INFO
    if not info_path.is_file():
        raise LowmedError(f"{root}: not a prepared dataset (no {DATASET_INFO}; run 'lowmed prepare' first)")
    return DatasetInfo.read(info_path)


def _read_manifest(path: Path, info: DatasetInfo) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype={"path": str, "split": str, "group": str, "label": str, "cache_path": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise LowmedError(f"{path}: not a readable manifest ({exc})") from None
    missing = [c for c in ("path", "split", "group", *label_columns(info.task, info.classes)) if c not in frame.columns]
    if missing:
        raise LowmedError(f"{path}: missing column(s) {', '.join(map(repr, missing))}")
    unknown_splits = set(frame["split"]) - set(SPLITS)
    if unknown_splits:
        raise LowmedError(f"{path}: unknown split(s) {sorted(unknown_splits)}; expected train, val or test")
    if info.task in ("binary", "multiclass"):
        unknown = set(frame["label"]) - set(info.classes)
        if unknown:
            raise LowmedError(f"{path}: label(s) {sorted(unknown)} are not in the class list {info.classes}")
    return frame


def label_columns(task: str, classes: list[str]) -> list[str]:
    """The manifest's label columns: ``label``, one per finding (multi-label), or none (an unlabelled corpus)."""
    if task == "unlabelled":
        return []
    return classes if task == "multilabel" else ["label"]


def positives_matrix(frame: pd.DataFrame, task: str, classes: list[str]) -> np.ndarray:
    """(images × buckets) 0/1: one-hot classes, positive findings plus a "no finding" bucket, or (unlabelled) one
    bucket holding every image."""
    if task == "unlabelled":
        return np.ones((len(frame), 1))
    if task == "multilabel":
        positive = (frame[classes].to_numpy(dtype=float, na_value=0.0) == 1).astype(float)
        return np.hstack([positive, (positive.sum(axis=1) == 0)[:, None].astype(float)])
    return (frame["label"].to_numpy()[:, None] == np.asarray(classes)[None, :]).astype(float)


def bucket_names(task: str, classes: list[str]) -> list[str]:
    if task == "unlabelled":
        return [UNLABELLED]
    return [*classes, NO_FINDING] if task == "multilabel" else list(classes)


def count_table(frame: pd.DataFrame, task: str, classes: list[str]) -> dict[str, dict[str, int]]:
    """{split: {class or finding: images (positives for multi-label)}} in split order."""
    counts = {}
    names = bucket_names(task, classes)
    for split in SPLITS:
        part = frame[frame["split"] == split]
        if len(part):
            totals = positives_matrix(part, task, classes).sum(axis=0)
            counts[split] = {name: int(total) for name, total in zip(names, totals)}
    return counts
