"""``lowmed subsample``: N training images per class, nested across N, the val and test sets untouched."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

import lowmed
from lowmed.config import check_seed
from lowmed.contracts import (
    DATASET_INFO,
    DEFAULT_PREPARED_ROOT,
    LAST_SUBSET,
    MANIFEST,
    SUBSETS,
    SubsetRecord,
    is_prepared,
    subset_path,
    subset_sidecar,
)
from lowmed.data.formats import STAMP_VERSION, CsvColumns, read_source, source_stamp
from lowmed.data.manifest import PreparedDataset, bucket_names, count_table, positives_matrix
from lowmed.errors import LowmedError
from lowmed.io import check_writable, sha256_file, staged_dir, write_csv, write_text

log = logging.getLogger(__name__)


@dataclass
class Subset:
    """A written subset manifest and what it holds."""

    path: Path
    dataset: PreparedDataset
    per_class: int
    seed: int
    warnings: list[str] = field(default_factory=list)

    @property
    def record(self) -> SubsetRecord:
        """The subset's sidecar (``subset-N-seedK.yaml``)."""
        assert self.dataset.subset is not None  # a subset manifest is read with its sidecar
        return self.dataset.subset


def subsample(
    data: str | os.PathLike,
    per_class: int,
    *,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    strict: bool = False,
    materialize: str | os.PathLike | None = None,
    prepared_dir: str | os.PathLike | None = None,
) -> Subset:
    """Write a manifest whose train rows are ``per_class`` images per class (val/test rows unchanged).

    For one seed the subset of a smaller N is contained in that of a larger N, and picks are spread
    over as many patients/lesions as possible. For multi-label data N means about N positives per
    finding (and N images with no finding), chosen greedily. ``data`` may be a raw dataset folder:
    it is then prepared with default options first (into ``prepared_dir``, by default
    ``./lowmed-data/<name>``, reused when it was prepared from the same source).
    """
    if per_class < 1:
        raise LowmedError(f"--per-class {per_class}: expected a positive number of images per class")
    check_seed(seed)
    if out is not None:  # before a raw dataset is prepared
        if Path(out).suffix != ".csv":
            raise LowmedError(f"--out {out}: expected a .csv file name for the subset manifest")
        check_writable(out, "--out")
    dataset = load_or_prepare(Path(data).expanduser(), prepared_dir)
    train = dataset.check_trainable().split("train")
    picked, shortfalls = _pick_nested(train, dataset.task, dataset.classes, per_class, seed)
    if shortfalls and strict:
        raise LowmedError(f"--per-class {per_class} --strict: {shortfalls[0]}")
    chosen = set(train.loc[picked, "path"])
    manifest = dataset.manifest
    keep = (manifest["split"] != "train") | manifest["path"].isin(chosen)
    subset_frame = manifest[keep]
    if out is None:
        out = subset_path(dataset.root / SUBSETS, per_class, seed)
        check_writable(out, "the subset manifest")
    out = Path(out)
    sidecar = SubsetRecord(
        lowmed_version=lowmed.__version__,
        prepared_dir=str(dataset.root),
        source_manifest_sha256=sha256_file(dataset.root / MANIFEST),
        per_class=per_class,
        seed=seed,
        task=dataset.task,
        meaning="positives per finding (greedy)" if dataset.task == "multilabel" else "images per class",
        counts=count_table(subset_frame, dataset.task, dataset.classes),
        images={str(k): int(v) for k, v in subset_frame["split"].value_counts().items()},
        train_available={"counts": dataset.info.counts.get("train", {}), "images": len(train)},
        shortfalls=shortfalls,
    )
    write_csv(out, subset_frame)
    sidecar.write(subset_sidecar(out))
    if out.resolve().is_relative_to(DEFAULT_PREPARED_ROOT.resolve()):
        write_text(DEFAULT_PREPARED_ROOT / LAST_SUBSET, str(out.resolve()) + "\n")
    # what PreparedDataset.load(out) would read back, without reading and hashing the manifests again
    subset = Subset(
        out,
        PreparedDataset(dataset.root, dataset.info, subset_frame.reset_index(drop=True), out, sidecar),
        per_class,
        seed,
        shortfalls,
    )
    if materialize:
        materialize_tree(subset.dataset, Path(materialize))
    return subset


def last_subset(root: Path = DEFAULT_PREPARED_ROOT) -> Path:
    """The subset ``lowmed subsample`` last wrote below ``root`` (what ``lowmed train`` with no DATA takes); with
    no record of it, the only subset there. Several and no record, or none, is an error that lists them."""
    pointer = root / LAST_SUBSET
    if pointer.is_file():
        recorded = Path(pointer.read_text().strip())
        if recorded.is_file():
            return recorded
    candidates = sorted(root.glob(f"*/{SUBSETS}/*.csv"))
    if len(candidates) == 1:
        return candidates[0].resolve()
    if not candidates:
        raise LowmedError(
            f"no dataset: give DATA (a prepared dir, subset manifest or raw dataset) or --subset; no subset from "
            f"'lowmed subsample' was found below {root.resolve()}"
        )
    raise LowmedError(
        f"no DATA given, and {len(candidates)} subsets below {root.resolve()} could be meant: "
        f"{', '.join(map(str, candidates))}; give one as DATA or --subset"
    )


def load_or_prepare(data: Path, prepared_dir: str | os.PathLike | None, role: str = "full") -> PreparedDataset:
    """A prepared dir or subset manifest as is; a raw dataset folder prepared with defaults (once), in ``role``
    (``prepare``'s: full, or test for an external test set)."""
    if is_prepared(data):
        return PreparedDataset.load(data)
    if not data.exists():
        raise LowmedError(f"{data}: no such file or folder")
    source = data.resolve()
    name = (source.stem if source.is_file() else source.name) + {"test": "-external", "unlabelled": "-unlabelled"}.get(
        role, ""
    )
    target = Path(prepared_dir) if prepared_dir else DEFAULT_PREPARED_ROOT / name
    stale = False
    if (target / DATASET_INFO).is_file():
        existing = PreparedDataset.load(target)
        if existing.source_path != str(source) or existing.role != role:
            raise LowmedError(
                f"{target} holds a dataset prepared from another source or with another --role; pass --prepared-dir"
            )
        stale = source_changed(existing)
        if not stale:
            log.info(f"Using {target}, prepared earlier from {data}")
            return existing
    from lowmed.data.prepare import prepare

    if stale:
        log.warning(
            f"{data} changed since it was prepared into {target} (images added, removed or modified); "
            "preparing it again"
        )
    else:
        what = {
            "test": "as an external test set (every image a test image)",
            "unlabelled": "as an unlabelled corpus",
        }.get(role, "with default options")
        log.info(f"{data} is a raw dataset: preparing it into {target} {what}")
    return prepare(data, target, role=role, overwrite=stale)


def source_changed(dataset: PreparedDataset, csv_columns: CsvColumns | None = None) -> bool:
    """Whether the raw dataset a prepared one was made from holds other images now (or another label file), read
    as it was prepared (``csv_columns`` as given to prepare). A source that is gone, or a dataset prepared before
    lowmed kept stamps of this kind, counts as unchanged: nothing to compare."""
    source = Path(dataset.source_path or "")
    stamp = dataset.info.source_stamp or ""
    if not stamp.startswith(STAMP_VERSION) or not dataset.source_path or not source.exists():
        return False
    try:
        found = read_source(
            source,
            "unlabelled" if dataset.role == "unlabelled" else dataset.info.source_format or "auto",
            frontal_only=bool(dataset.info.frontal_only),
            csv_columns=csv_columns,
            allow_outside_root=True,
        )
    except LowmedError:
        return True  # it no longer reads as the dataset it was
    return source_stamp(found) != dataset.info.source_stamp


def _pick_nested(
    train: pd.DataFrame, task: str, classes: list[str], per_class: int, seed: int
) -> tuple[list[int], list[str]]:
    """Row positions in ``train`` to keep; a fixed order per seed makes subsets nested in N."""
    if task == "multilabel":
        return _pick_multilabel(train, classes, per_class, seed)
    picked, shortfalls = [], []
    for name in classes:
        rows = np.flatnonzero(train["label"].to_numpy() == name)
        order = rows[_spread_order(train["group"].to_numpy()[rows], _rng(seed, name))]
        picked.extend(order[:per_class].tolist())
        if len(rows) < per_class:
            shortfalls.append(f"class {name!r} has only {len(rows)} training images (wanted {per_class}); all are used")
    return sorted(picked), shortfalls


def _pick_multilabel(train: pd.DataFrame, classes: list[str], per_class: int, seed: int) -> tuple[list[int], list[str]]:
    """Greedy: keep serving the bucket (finding, or "no finding") with the fewest positives so far."""
    positives = positives_matrix(train, "multilabel", classes).astype(bool)
    base = _spread_order(train["group"].to_numpy(), _rng(seed, "multilabel"))
    queues = [[i for i in base if positives[i, b]] for b in range(positives.shape[1])]
    heads = [0] * len(queues)
    counts = np.zeros(positives.shape[1], dtype=int)
    available = positives.sum(axis=0)
    selected = np.zeros(len(train), dtype=bool)
    picked = []
    # The choice never looks at per_class (only the stopping rule does), so subsets are nested in N.
    while (counts < np.minimum(per_class, available)).any():
        unfinished = np.flatnonzero(counts < available)
        bucket = unfinished[np.argmin(counts[unfinished])]
        queue = queues[bucket]
        while selected[queue[heads[bucket]]]:
            heads[bucket] += 1
        image = queue[heads[bucket]]
        selected[image] = True
        counts += positives[image]
        picked.append(image)
    names = bucket_names("multilabel", classes)
    shortfalls = [
        f"finding {names[b]!r} has only {available[b]} positive training images (wanted {per_class})"
        for b in range(len(names))
        if available[b] < per_class
    ]
    return sorted(picked), shortfalls


def _rng(seed: int, name: str) -> np.random.Generator:
    """A generator per (seed, class) so that one class's picks never depend on another's."""
    return np.random.default_rng([seed, int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)])


def _spread_order(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A permutation visiting groups round-robin: one image of every group before a second of any."""
    if len(groups) == 0:
        return np.zeros(0, dtype=int)
    shuffled = rng.permutation(len(groups))
    _, group_ids = np.unique(groups[shuffled], return_inverse=True)
    group_rank = rng.permutation(group_ids.max() + 1)[group_ids]
    position_in_group = pd.Series(group_ids).groupby(group_ids).cumcount().to_numpy()
    return shuffled[np.lexsort((group_rank, position_in_group))]


def materialize_tree(dataset: PreparedDataset, target: Path) -> None:
    """Write ``target/{split}/{class}/file`` (hard links where possible, copies otherwise)."""
    if dataset.task == "multilabel":
        raise LowmedError("--materialize writes one folder per class; it needs single-label data")
    if target.exists() and any(target.iterdir()):
        raise LowmedError(f"--materialize {target}: folder is not empty; choose a new one")
    with staged_dir(target) as staging:
        frame = dataset.manifest
        for source, split, label, group in zip(
            dataset.image_paths(prefer_cache=False), frame["split"], frame["label"], frame["group"]
        ):
            destination = staging / split / label / source.name
            if destination.exists():  # same file name from two folders: keep both
                destination = destination.with_name(f"{Path(str(group)).name}_{source.name}")
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, destination)
            except OSError:
                shutil.copy2(source, destination)
