"""``lowmed prepare``: raw dataset in its native layout → verified, split, leakage-free manifest."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import secrets
import sys
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from functools import partial
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

import lowmed
from lowmed.config import check_seed
from lowmed.console import track
from lowmed.contracts import DATASET_INFO, MANIFEST, DatasetInfo, SplitRecord
from lowmed.data.formats import SPLITS, CsvColumns, SourceRecords, check_format, read_source, source_stamp
from lowmed.data.images import inspect_image
from lowmed.data.manifest import PreparedDataset, bucket_names, count_table, positives_matrix
from lowmed.data.splits import group_stratified_split
from lowmed.errors import LowmedError
from lowmed.io import check_writable, sha256_file, staged_dir, write_csv

UNCERTAIN_POLICIES = ("ignore", "zeros", "ones")
# full: train/val/test as given or made; test: every image a test image (an external set); unlabelled: images without
# labels, every one a training image of self-supervised pretraining
ROLES = ("full", "test", "unlabelled")
_SPLIT_PRIORITY = {"test": 0, "val": 1, "train": 2}  # a duplicate is kept in the split listed first


def prepare(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    format: str = "auto",
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.25,
    min_val_per_class: int = 20,
    cache_size: int | None = None,
    workers: int | None = None,
    frontal_only: bool = False,
    uncertain: str = "ignore",
    csv_columns: CsvColumns | None = None,
    allow_outside_root: bool = False,
    hash_groups: bool = False,
    role: str = "full",
    normalize_labels: bool = False,
    strict: bool = False,
    overwrite: bool = False,
) -> PreparedDataset:
    """Read ``src``, verify every image, remove duplicates and leakage, make the missing splits,
    and write ``manifest.csv`` and ``dataset.yaml`` (and resized copies with ``cache_size``) to ``out``.

    DICOM files are read as images (``lowmed.data.dicom``); their PatientID is the group where the layout gives
    none. ``hash_groups``: every group written as a salted hash (the salt is not kept), so that no patient
    identifier reaches the manifest. ``role="test"``: every image is a test image (an external test set: no
    train or val split is made, and none is needed). ``normalize_labels``: labels that differ only by case or
    surrounding spaces are merged (without it they are an error). ``strict``: every warning is an error.

    The output dir appears whole or not at all: everything is written to a staging dir first.
    """
    check_seed(seed)
    _check_options(format, val_fraction, test_fraction, min_val_per_class, cache_size, uncertain)
    if role not in ROLES:
        raise LowmedError(
            f"--role {role!r}: expected full (train/val/test), test (an external test set) or unlabelled (images "
            "without labels, for self-supervised pretraining)"
        )
    out = Path(out).expanduser().resolve()
    _check_out_dir(out, overwrite)
    check_writable(out, "--out")
    source = read_source(
        Path(src),
        "unlabelled" if role == "unlabelled" else format,
        frontal_only=frontal_only,
        csv_columns=csv_columns,
        allow_outside_root=allow_outside_root,
        normalize_labels=normalize_labels,
    )
    if source.task == "unlabelled":
        if role == "test":
            raise LowmedError(f"{src}: found images without labels; an external test set (--role test) needs labels")
        role = "unlabelled"
    with staged_dir(out) as staging:
        records, excluded = _inspect_all(source, staging, cache_size, workers)
        records = _patient_groups(records, hash_groups)
        if frontal_only and "view_position" in records:
            records, excluded = _frontal_views(records, excluded)
        records, excluded, leakage, warnings = _drop_duplicates(records, excluded)
        if role == "test":
            records, split_info = (
                records.assign(split="test"),
                SplitRecord(origin={"test": "every image (--role test)"}),
            )
        elif role == "unlabelled":
            records, split_info = (
                records.assign(split="train"),
                SplitRecord(origin={"train": "every image (unlabelled, for self-supervised pretraining)"}),
            )
        else:
            records, split_info = _assign_splits(records, source, seed, val_fraction, test_fraction, min_val_per_class)
        manifest = _manifest_frame(records, source)
        overlap = _group_overlap(manifest)
        warnings += _split_share_warnings(manifest, split_info)
        warnings += _empty_class_problems(manifest, source, role, excluded)
        warnings += [
            f"{pair}: {item['groups']} patient/lesion group(s) appear in both splits "
            f"(e.g. {', '.join(item['examples'][:3])}); the source gave these splits and they were kept"
            for pair, item in overlap.items()
        ]
        if strict and warnings:
            more = f" (and {len(warnings) - 1} more warning(s))" if len(warnings) > 1 else ""
            raise LowmedError(f"--strict: {warnings[0]}{more}")
        write_csv(staging / MANIFEST, manifest)
        DatasetInfo(
            lowmed_version=lowmed.__version__,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            task=source.task,
            classes=source.classes,
            source={"format": source.format, "path": str(source.root), "stamp": source_stamp(source)},
            seed=seed,
            role=role,
            splits=split_info,
            uncertain=uncertain if source.task == "multilabel" else None,
            frontal_only=frontal_only if frontal_only or source.format == "chexpert" else None,
            cache={"size": cache_size} if cache_size else None,
            images={
                "found": len(source.records) + len(source.excluded),
                "usable": len(manifest),
                "excluded": len(excluded),
            },
            counts=count_table(manifest, source.task, source.classes),
            groups={
                s: int(manifest.loc[manifest["split"] == s, "group"].nunique())
                for s in SPLITS
                if (manifest["split"] == s).any()
            },
            groups_hashed=hash_groups,
            group_overlap=overlap,
            leakage_removed=leakage,
            warnings=warnings,
            notes=source.notes,
            excluded=excluded,
            manifest_sha256=sha256_file(staging / MANIFEST),
        ).write(staging / DATASET_INFO)
    return PreparedDataset.load(out)


def _check_options(
    format: str,
    val_fraction: float,
    test_fraction: float,
    min_val_per_class: int,
    cache_size: int | None,
    uncertain: str,
) -> None:
    check_format(format)
    if not 0 < val_fraction < 1 or not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise LowmedError(
            f"--val-fraction {val_fraction} and --test-fraction {test_fraction}: "
            "expected each between 0 and 1 and together below 1"
        )
    if min_val_per_class < 1:
        raise LowmedError(f"--min-val-per-class {min_val_per_class}: expected at least 1")
    if cache_size is not None and cache_size < 16:
        raise LowmedError(f"--cache-size {cache_size}: expected at least 16 (pixels, shorter side)")
    if uncertain not in UNCERTAIN_POLICIES:
        raise LowmedError(f"--uncertain {uncertain!r}: expected one of {', '.join(UNCERTAIN_POLICIES)}")


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.is_file():
        raise LowmedError(f"--out {out}: is a file; expected a folder for the prepared dataset")
    if out.is_dir() and any(out.iterdir()):
        prepared = (out / MANIFEST).exists() and (out / DATASET_INFO).exists()
        if not overwrite:
            what = "holds a prepared dataset" if prepared else "is not empty"
            raise LowmedError(f"--out {out}: {what}; choose another folder or pass --overwrite")
        if not prepared:  # --overwrite replaces an earlier prepared dataset, nothing else
            raise LowmedError(
                f"--out {out}: holds files that are not a prepared dataset; --overwrite replaces only one; choose "
                "another folder"
            )


def _inspect_all(
    source: SourceRecords, staging: Path, cache_size: int | None, workers: int | None
) -> tuple[pd.DataFrame, list[dict]]:
    """Open every image once (in parallel); keep the good ones, list the others with a reason."""
    paths = source.records["path"].tolist()
    inspect = partial(inspect_image, cache_dir=str(staging) if cache_size else None, cache_size=cache_size)
    workers = workers or os.cpu_count() or 1
    if workers > 1 and len(paths) > 64:
        # fork on Linux: workers inherit the loaded modules instead of re-importing the caller's __main__ (the whole
        # CLI, torch and all). They are started before the progress bar's thread exists, so the fork copies no
        # thread's locks; elsewhere, spawn.
        context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            pool.submit(int).result()
            results = list(track(pool.map(inspect, paths, chunksize=16), len(paths), "Verifying images"))
    else:
        results = list(track(map(inspect, paths), len(paths), "Verifying images"))
    found = pd.DataFrame(results, index=source.records.index)
    records = pd.concat([source.records, found.drop(columns=["ok", "reason"])], axis=1)
    bad = ~found["ok"].astype(bool)
    excluded = list(source.excluded) + [
        {"path": path, "reason": reason} for path, reason in zip(records.loc[bad, "path"], found.loc[bad, "reason"])
    ]
    if bad.all():
        raise LowmedError(f"{source.root}: none of the {len(paths)} files is a usable image")
    good = records[~bad].astype({"width": int, "height": int})
    return good.reset_index(drop=True), excluded


def _patient_groups(records: pd.DataFrame, hash_groups: bool) -> pd.DataFrame:
    """DICOM PatientIDs as the groups the layout did not give; the PatientID column itself is never kept (the group
    holds it, or its hash)."""
    given = records.pop("group_given") if "group_given" in records else pd.Series(True, index=records.index)
    given = given.fillna(True).astype(bool)
    if "patient_id" in records:
        patient = records.pop("patient_id").fillna("").astype(str)
        from_dicom = ~given & (patient != "")
        records.loc[from_dicom, "group"] = patient[from_dicom]
    if hash_groups:
        salt = secrets.token_bytes(16)
        records["group"] = [hashlib.sha256(salt + str(g).encode()).hexdigest()[:16] for g in records["group"]]
    return records


def _frontal_views(records: pd.DataFrame, excluded: list[dict]) -> tuple[pd.DataFrame, list[dict]]:
    """DICOM images whose ViewPosition is not PA or AP, excluded with it as the reason (files without the tag, and
    other formats' images, are kept)."""
    view = records["view_position"].fillna("").astype(str).str.upper()
    lateral = (view != "") & ~view.isin(["PA", "AP"])
    excluded = excluded + [
        {"path": path, "reason": f"not a frontal view (ViewPosition {position}; --frontal-only)"}
        for path, position in zip(records.loc[lateral, "path"], view[lateral])
    ]
    if lateral.all():
        raise LowmedError("--frontal-only: no image has a frontal ViewPosition (PA or AP)")
    return records[~lateral].reset_index(drop=True), excluded


def _drop_duplicates(records: pd.DataFrame, excluded: list[dict]):
    """Keep one copy of each exact duplicate, preferring test, then val, then train.

    A copy in another split is leakage: it is removed from the lower split and reported.
    """
    rank = records["given_split"].map(_SPLIT_PRIORITY).fillna(len(_SPLIT_PRIORITY))
    records = records.assign(_rank=rank).sort_values("_rank", kind="stable")
    first = records.drop_duplicates("sha1").set_index("sha1")
    duplicated = records["sha1"].duplicated()
    leakage, warnings = [], []
    excluded = list(excluded)
    for row in records[duplicated].itertuples():
        kept = first.loc[row.sha1]
        if isinstance(kept["given_split"], str) and kept["given_split"] != row.given_split:
            reason = (
                f"exact duplicate of {kept['path']} in {kept['given_split']}: removed from {row.given_split} (leakage)"
            )
            leakage.append(
                {
                    "path": row.path,
                    "split": row.given_split,
                    "duplicate_of": kept["path"],
                    "duplicate_split": kept["given_split"],
                }
            )
        else:
            reason = f"exact duplicate of {kept['path']}"
        if "label" in records and kept["label"] != row.label:
            warnings.append(
                f"{row.path} and {kept['path']} are the same image labelled {row.label!r} and {kept['label']!r}"
            )
        excluded.append({"path": row.path, "reason": reason})
    records = records[~duplicated].sort_index().drop(columns="_rank").reset_index(drop=True)
    return records, excluded, leakage, warnings


def _assign_splits(
    records: pd.DataFrame,
    source: SourceRecords,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    min_val_per_class: int,
) -> tuple[pd.DataFrame, SplitRecord]:
    """Keep the source's own splits; make the missing ones, stratified and disjoint by group.

    A given val split too small to be useful is folded into train and rebuilt from it.
    A given test split is never touched.
    """
    targets = positives_matrix(records, source.task, source.classes)
    buckets = bucket_names(source.task, source.classes)
    split = records["given_split"].copy()
    origin = {s: "given" for s in SPLITS if (split == s).any()}
    val_rebuilt = None
    val_rows = (split == "val").to_numpy()
    if val_rows.any():
        val_counts = targets[val_rows].sum(axis=0)
        too_small = (
            val_rows.sum() < min_val_per_class
            if source.task == "multilabel"
            else bool((val_counts < min_val_per_class).any())
        )
        if too_small:
            split[val_rows] = "train"
            del origin["val"]
            val_rebuilt = (
                f"the given val split had {int(val_rows.sum())} images "
                f"(fewer than {min_val_per_class} per class): folded into train, "
                "and a new val split was made from train"
            )
    pool = split.isna() | (split == "train") if origin else split.isna()
    pool_counts = targets[pool.to_numpy()].sum(axis=0)
    wanted = {}
    if "test" not in origin:
        wanted["test"] = test_fraction * pool_counts
    if "val" not in origin:
        val_wanted = val_fraction * pool_counts
        if source.task != "multilabel":
            val_wanted = np.minimum(np.maximum(val_wanted, min_val_per_class), pool_counts / 2)
        wanted["val"] = val_wanted
    if wanted:
        split[pool] = group_stratified_split(records.loc[pool, "group"], targets[pool.to_numpy()], wanted, seed)
        origin.update({name: "made" for name in wanted})
        origin["train"] = "given, less the splits made from it" if origin.get("train") == "given" else "made"
    if not (split == "train").any():
        raise LowmedError(f"no training images left after making splits (classes: {', '.join(buckets)})")
    return records.assign(split=split), SplitRecord(
        origin={s: origin[s] for s in SPLITS if s in origin},
        val_rebuilt=val_rebuilt,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        min_val_per_class=min_val_per_class,
    )


def _split_share_warnings(manifest: pd.DataFrame, split_info: SplitRecord) -> list[str]:
    """A made split far from the share asked for (on a small dataset the val floor per class, or whole patients
    kept together, can move it a long way) is said, with the reason."""
    origin = split_info.origin
    sizes = manifest["split"].value_counts()
    pool = int(sum(sizes.get(s, 0) for s in origin if origin[s] != "given"))
    warnings = []
    for split in ("val", "test"):
        if origin.get(split) != "made":
            continue
        fraction = split_info.fraction(split)
        if fraction is None:  # not recorded: nothing to hold the split's size to
            continue
        asked, got = fraction * pool, int(sizes.get(split, 0))
        if abs(got - asked) > max(2, 0.25 * asked):
            reason = (
                f"--min-val-per-class {split_info.min_val_per_class} sets a floor per class (lower it for a "
                "dataset this small)"
                if split == "val" and got > asked
                else "whole patients/lesions stay in one split"
            )
            warnings.append(
                f"{split} split: {got} of {pool} images ({got / pool:.0%}), where --{split}-fraction "
                f"{split_info.fraction(split)} asked for about {asked:.0f}: {reason}"
            )
    return warnings


def _empty_class_problems(manifest: pd.DataFrame, source: SourceRecords, role: str, excluded: list[dict]) -> list[str]:
    """A class with no image in a split cannot be learnt or measured there: refused for single-label data; for
    multi-label data, a finding without positives in a split is a warning (its AUROC is undefined there). An
    external test set (``role="test"``) may lack classes: evaluation reports them as absent; an unlabelled corpus has
    none."""
    if role in ("test", "unlabelled"):
        return []
    counts = count_table(manifest, source.task, source.classes)
    problems = [(split, name) for split, row in counts.items() for name, count in row.items() if count == 0]
    if not problems:
        return []
    listed = ", ".join(f"{name!r} in {split}" for split, name in problems)
    after = ""
    if excluded:
        after = f", after {len(excluded)} file(s) were excluded (e.g. {excluded[0]['path']}: {excluded[0]['reason']})"
    if source.task != "multilabel":
        raise LowmedError(
            f"{source.root}: no images of {listed}{after}; every class needs images in train, val and test"
        )
    return [f"no positive images of {listed}{after}: those findings cannot be learnt or measured there"]


def _manifest_frame(records: pd.DataFrame, source: SourceRecords) -> pd.DataFrame:
    leading = ["path", "split", "group", *source.label_columns, "width", "height", "mode", "sha1"]
    if "cache_path" in records:
        leading.append("cache_path")
    metadata = [c for c in records.columns if c not in leading and c != "given_split"]
    order = records["split"].map({s: i for i, s in enumerate(SPLITS)})
    return records.assign(_order=order).sort_values(["_order", "path"], kind="stable")[leading + metadata]


def _group_overlap(manifest: pd.DataFrame) -> dict:
    overlap = {}
    groups = {s: set(manifest.loc[manifest["split"] == s, "group"]) for s in SPLITS}
    for a, b in combinations(SPLITS, 2):
        shared = sorted(groups[a] & groups[b])
        if shared:
            overlap[f"{a}/{b}"] = {"groups": len(shared), "examples": shared[:5]}
    return overlap
