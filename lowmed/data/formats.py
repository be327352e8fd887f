"""One reader per native dataset layout.

Each reader turns a raw dataset into a ``SourceRecords``: one row per candidate image with its
absolute path, label(s), patient/lesion group and the split the source assigns (or none).
Readers only look at names and tables; opening the images is ``prepare``'s job.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lowmed.data.images import IMAGE_EXTENSIONS, list_files, refuse_undecodable_names
from lowmed.errors import LowmedError
from lowmed.io import read_csv_file

FORMATS = ("auto", "imagefolder", "ham10000", "chexpert", "nih", "rsna", "csv", "unlabelled")
RSNA_CLASSES = ["NORMAL", "PNEUMONIA"]  # Kermany's names, so that a model trained on one evaluates on the other
SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
CHEXPERT_FINDINGS = [
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
]
NIH_FINDINGS = [
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
]
_KERMANY_PERSON = re.compile(r"^(person\d+)_", re.IGNORECASE)
_KERMANY_IM = re.compile(r"(?:^|-)(IM-\d{4})(?=-|\.|$)", re.IGNORECASE)
_CHEXPERT_PATIENT = re.compile(r"(patient\d+)")


@dataclass
class SourceRecords:
    """What a reader found: candidate images and the facts of the source layout."""

    format: str
    task: str  # binary | multiclass | multilabel
    classes: list[str]
    # path, group, given_split, label or one column per finding, metadata; group_given False where the layout knows
    # no patient and the group is the image itself (a DICOM file's PatientID then takes its place)
    records: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    excluded: list[dict] = field(default_factory=list)
    root: Path | None = None  # the SRC it was read from

    @property
    def label_columns(self) -> list[str]:
        if self.task == "unlabelled":
            return []
        return self.classes if self.task == "multilabel" else ["label"]


@dataclass
class CsvColumns:
    """Column names for the generic ``csv`` format."""

    path: str = "path"
    label: str | None = "label"
    labels: list[str] | None = None  # several columns → multi-label
    group: str | None = None
    split: str | None = None


def single_label_task(classes: list[str]) -> str:
    return "binary" if len(classes) == 2 else "multiclass"


def kermany_group(filename: str) -> str | None:
    """Patient id from a Kermany file name: ``person123_bacteria_4.jpeg`` → ``person123``,
    ``IM-0115-0001.jpeg`` and ``NORMAL2-IM-0115-0001.jpeg`` → ``IM-0115``."""
    match = _KERMANY_PERSON.match(filename) or _KERMANY_IM.search(filename)
    return match.group(1) if match else None


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise LowmedError(f"--format {fmt!r} is not known; expected one of {', '.join(FORMATS)}")


def detect_format(src: Path) -> str:
    if src.is_file():
        if src.suffix.lower() == ".csv":
            if src.name.lower().startswith("stage_2_train_labels"):
                return "rsna"
            return "ham10000" if src.name.lower().startswith("ham10000_metadata") else "csv"
        raise LowmedError(f"{src}: expected a dataset folder or a CSV file")
    if _find_one(src, "HAM10000_metadata*.csv"):
        return "ham10000"
    if _find_one(src, "Data_Entry_2017*.csv"):
        return "nih"
    if _chexpert_csvs(src):
        return "chexpert"
    if _find_one(src, RSNA_LABELS):
        return "rsna"
    if any(d.is_dir() and not d.name.startswith(".") for d in src.iterdir()):
        return "imagefolder"
    if any(path.suffix.lower() in IMAGE_EXTENSIONS for path in list_files(src)):  # images, no class folders
        return "unlabelled"
    raise LowmedError(
        f"{src}: cannot tell the dataset layout (no class folders, HAM10000_metadata.csv, "
        "Data_Entry_2017.csv, CheXpert train.csv or stage_2_train_labels.csv found); pass --format"
    )


def read_source(
    src: Path,
    fmt: str = "auto",
    *,
    frontal_only: bool = False,
    csv_columns: CsvColumns | None = None,
    allow_outside_root: bool = False,
    normalize_labels: bool = False,
) -> SourceRecords:
    """The images and labels at ``src`` in its native layout. Labels that differ only by case or surrounding
    spaces are refused, or with ``normalize_labels`` merged under their most common spelling."""
    src = Path(src).expanduser().resolve()
    if not src.exists():
        raise LowmedError(f"{src}: no such file or folder")
    columns = csv_columns or CsvColumns()
    if fmt == "auto":
        fmt = detect_format(src)
        if fmt == "csv" and columns.labels is None and columns.label not in _csv_header(src):
            fmt = "unlabelled"  # a CSV of paths with no label column: images without labels
    if fmt == "imagefolder":
        found = read_imagefolder(src)
    elif fmt == "ham10000":
        found = read_ham10000(src)
    elif fmt == "chexpert":
        found = read_chexpert(src, frontal_only=frontal_only)
    elif fmt == "nih":
        found = read_nih(src)
    elif fmt == "rsna":
        found = read_rsna(src)
    elif fmt == "csv":
        found = read_csv_dataset(src, columns, allow_outside_root=allow_outside_root)
    elif fmt == "unlabelled":
        found = read_unlabelled(src, columns, allow_outside_root=allow_outside_root)
    else:
        check_format(fmt)
    if found.records.empty:
        raise LowmedError(f"{src}: no images found for format {fmt!r}")
    refuse_undecodable_names(found.records["path"], src)
    if found.task not in ("multilabel", "unlabelled"):
        found = _merge_label_spellings(found, src) if normalize_labels else _refuse_label_spellings(found, src)
    found.root = src
    return found


STAMP_VERSION = "2:"  # stamps before it hashed modification times, so that a copy of a source read as changed


def source_stamp(found: SourceRecords) -> str:
    """A hash of what a source holds now: each candidate image's path and size, and the content of the files that
    label them (a source CSV, the CSV files beside the images). Another stamp later means the source changed since
    it was prepared, and its prepared copy is stale; a copy of the same files (another machine, a fresh download,
    new modification times) keeps its stamp."""
    root = found.root
    assert root is not None  # the readers record where they read
    indexes = [root] if root.is_file() else sorted(root.glob("*.csv"))
    digest = hashlib.sha256()
    for path in sorted(set(found.records["path"].astype(str))):
        try:
            digest.update(f"{path}\0{os.stat(path).st_size}\n".encode())
        except OSError:
            digest.update(f"{path}\0missing\n".encode())
    for index in indexes:
        digest.update(f"{index}\0{hashlib.sha256(index.read_bytes()).hexdigest()}\n".encode())
    return STAMP_VERSION + digest.hexdigest()


def _label_spellings(labels: pd.Series) -> dict[str, pd.Series]:
    """Per label written two or more ways (ignoring case and surrounding spaces): each spelling's image count."""
    key = labels.str.strip().str.casefold()
    counts = labels.groupby(key).value_counts()
    return {k: counts[k] for k in counts.index.get_level_values(0).unique() if len(counts[k]) > 1}


def _refuse_label_spellings(found: SourceRecords, src: Path) -> SourceRecords:
    clashes = _label_spellings(found.records["label"])
    if clashes:
        listed = "; ".join(
            " and ".join(f"{spelling!r} ({count})" for spelling, count in spellings.items())
            for spellings in clashes.values()
        )
        raise LowmedError(
            f"{src}: labels that differ only by case or surrounding spaces would be separate classes: {listed}; "
            "correct them, or pass --normalize-labels to merge each under its most common spelling"
        )
    return found


def _merge_label_spellings(found: SourceRecords, src: Path) -> SourceRecords:
    labels = found.records["label"].str.strip()
    merged = {}
    for spellings in _label_spellings(labels).values():  # value_counts: the most common spelling first
        merged.update({spelling: spellings.index[0] for spelling in spellings.index[1:]})
    if merged:
        found.notes.append(
            "--normalize-labels: "
            + ", ".join(f"{a!r} → {b!r}" for a, b in merged.items())
            + " (and surrounding spaces removed)"
        )
    records = found.records.assign(label=labels.replace(merged))
    classes = sorted(records["label"].unique())
    if len(classes) < 2:
        raise LowmedError(f"{src}: with --normalize-labels, {len(classes)} class is left; expected at least 2")
    return dataclasses.replace(found, task=single_label_task(classes), classes=classes, records=records)


# --- imagefolder -------------------------------------------------------------------------------


def read_imagefolder(src: Path) -> SourceRecords:
    if not src.is_dir():
        raise LowmedError(f"{src}: the imagefolder format needs a folder")
    subdirs = _visible_dirs(src)
    split_dirs = [(d, _SPLIT_ALIASES[d.name.lower()]) for d in subdirs if d.name.lower() in _SPLIT_ALIASES]
    layout: list[tuple[str | None, Path]]
    if split_dirs:
        split_dirs.sort(key=lambda item: SPLITS.index(item[1]))
        layout = [(split, class_dir) for split_dir, split in split_dirs for class_dir in _class_dirs(split_dir)]
        notes = [f"splits given by folders: {', '.join(s for _, s in split_dirs)}"]
    else:
        layout = [(None, class_dir) for class_dir in _class_dirs(src)]
        notes = ["no split folders: lowmed makes train/val/test"]

    canonical: dict[str, str] = {}  # lower-case name → the spelling seen first (train first)
    rows = []
    for split, class_dir in layout:
        label = canonical.setdefault(class_dir.name.lower(), class_dir.name)
        files = list_files(class_dir)
        if not files:
            raise LowmedError(f"{class_dir}: class folder is empty; expected image files for class {label!r}")
        for path in files:
            rows.append(
                {
                    "path": str(path),
                    "label": label,
                    "given_split": split,
                    "group": kermany_group(path.name) or path.relative_to(src).as_posix(),
                    "group_given": kermany_group(path.name) is not None,
                }
            )
    classes = sorted(canonical.values())
    if len(classes) < 2:
        raise LowmedError(f"{src}: found {len(classes)} class folder(s); expected at least 2 (one folder per class)")
    if split_dirs:
        train_classes = {r["label"] for r in rows if r["given_split"] == "train"}
        missing = [c for c in classes if c not in train_classes]
        if any(s == "train" for _, s in split_dirs) and missing:
            raise LowmedError(f"{src}: class(es) {', '.join(missing)} have no folder under train/")
    return SourceRecords("imagefolder", single_label_task(classes), classes, pd.DataFrame(rows), notes)


def _visible_dirs(parent: Path) -> list[Path]:
    return [
        d
        for d in sorted(parent.iterdir())
        if d.is_dir() and not d.name.startswith(".") and d.name.lower() != "__macosx"
    ]


def _class_dirs(parent: Path) -> list[Path]:
    dirs = _visible_dirs(parent)
    if not dirs:
        raise LowmedError(f"{parent}: no class folders; expected one sub-folder per class")
    return dirs


# --- RSNA Pneumonia Detection Challenge ----------------------------------------------------------

RSNA_LABELS = "stage_2_train_labels*.csv"


def read_rsna(src: Path) -> SourceRecords:
    """``stage_2_train_labels.csv`` (one row per box: patientId, x, y, width, height, Target) and
    ``stage_2_train_images/<patientId>.dcm``: one row per image, PNEUMONIA where any of its rows has Target 1;
    ``stage_2_detailed_class_info.csv``, when present, becomes the ``rsna_class`` column."""
    table, labels_path, root = _metadata_table(src, RSNA_LABELS, ["patientId", "Target"], image_id=None)
    images = _index_images(root)
    detail_path = _find_one(labels_path.parent, "stage_2_detailed_class_info*.csv")
    detail = {}
    if detail_path is not None:
        classes_table = _read_csv(detail_path, required=["patientId", "class"])
        detail = classes_table.drop_duplicates("patientId").set_index("patientId")["class"].to_dict()
    target = pd.to_numeric(table["Target"], errors="coerce")
    if target.isna().any() or not target.isin([0, 1]).all():
        line = int(np.flatnonzero(target.isna() | ~target.isin([0, 1]))[0]) + 2
        raise LowmedError(f"{labels_path}: row {line}, column 'Target': expected 0 or 1")
    positive = target.groupby(table["patientId"], sort=False).max()
    rows, excluded = [], []
    for patient, label in positive.items():
        path = images.get(patient)
        if path is None:
            excluded.append({"path": f"{patient}.dcm", "reason": "listed in the labels, image file not found"})
            continue
        row: dict[str, Any] = {
            "path": str(path),
            "label": RSNA_CLASSES[int(label)],
            "group": patient,
            "given_split": None,
        }
        rows.append(row | ({"rsna_class": detail.get(patient, "")} if detail else {}))
    notes = [
        f"RSNA pneumonia: {len(positive)} images from {labels_path.name} (several boxes per image made one row); "
        "no official test labels, so lowmed makes train/val/test, disjoint by patientId"
    ]
    return SourceRecords("rsna", "binary", RSNA_CLASSES, pd.DataFrame(rows), notes, excluded)


# --- HAM10000 ----------------------------------------------------------------------------------


def read_ham10000(src: Path) -> SourceRecords:
    table, metadata_path, root = _metadata_table(
        src, "HAM10000_metadata*.csv", ["lesion_id", "image_id", "dx"], "image_id"
    )
    images = _index_images(root)
    rows, excluded = [], []
    for record in table.to_dict("records"):
        path = images.get(str(record["image_id"]))
        if path is None:
            excluded.append({"path": str(record["image_id"]), "reason": "listed in metadata, image file not found"})
            continue
        extra = {k: v for k, v in record.items() if k not in ("lesion_id", "image_id", "dx")}
        rows.append(
            {
                "path": str(path),
                "label": str(record["dx"]),
                "group": str(record["lesion_id"]),
                "given_split": None,
                "image_id": record["image_id"],
                **extra,
            }
        )
    classes = sorted(table["dx"].astype(str).unique())
    notes = ["HAM10000 has no official split: lowmed makes train/val/test, disjoint by lesion_id"]
    return SourceRecords("ham10000", single_label_task(classes), classes, pd.DataFrame(rows), notes, excluded)


# --- CheXpert ----------------------------------------------------------------------------------


def _chexpert_csvs(src: Path) -> dict[str, Path]:
    for base in (src, src / "CheXpert-v1.0-small", src / "CheXpert-v1.0"):
        found = {
            split: base / name
            for name, split in (("train.csv", "train"), ("valid.csv", "test"))
            if (base / name).is_file()
        }
        if "train" in found:
            header = pd.read_csv(found["train"], nrows=0).columns
            if "Path" in header:
                return found
    return {}


def read_chexpert(src: Path, *, frontal_only: bool = False) -> SourceRecords:
    csvs = _chexpert_csvs(src) if src.is_dir() else {}
    if not csvs:
        raise LowmedError(f"{src}: CheXpert train.csv (with a 'Path' column) not found")
    frames = []
    for split, csv_path in csvs.items():
        table = _read_csv(csv_path, required=["Path", *CHEXPERT_FINDINGS])
        _refuse_duplicates(table, "Path", csv_path)
        for finding in CHEXPERT_FINDINGS:
            table[finding] = _uncertain_labels(table[finding], csv_path, finding)
        table["given_split"] = split
        table["source_csv"] = csv_path
        frames.append(table)
    table = pd.concat(frames, ignore_index=True)
    if frontal_only:
        frontal = (
            table["Frontal/Lateral"].astype(str).str.lower() == "frontal"
            if "Frontal/Lateral" in table
            else table["Path"].str.contains("frontal", case=False)
        )
        table = table[frontal]
    rows, excluded = [], []
    for record in table.to_dict("records"):
        path = _resolve_chexpert_path(record["Path"], record["source_csv"].parent)
        if path is None:
            excluded.append({"path": record["Path"], "reason": "listed in CSV, image file not found"})
            continue
        patient = _CHEXPERT_PATIENT.search(record["Path"])
        extra = {k: v for k, v in record.items() if k not in ("Path", "source_csv")}
        rows.append({"path": str(path), "group": patient.group(1) if patient else record["Path"], **extra})
    notes = ["valid.csv (radiologist-labelled) is the test split; val is made from train by patient"]
    if frontal_only:
        notes.append("frontal views only")
    return SourceRecords("chexpert", "multilabel", list(CHEXPERT_FINDINGS), pd.DataFrame(rows), notes, excluded)


def _resolve_chexpert_path(listed: str, csv_dir: Path) -> Path | None:
    """CheXpert paths start with ``CheXpert-v1.0-small/``; the CSV may sit inside or beside that folder.
    A path that leads outside the dataset (``../``) is treated as missing."""
    relative = Path(listed)
    for base, candidate in ((csv_dir.parent, relative), (csv_dir, relative), (csv_dir, Path(*relative.parts[1:]))):
        path = (base / candidate).resolve()
        if path.is_file() and path.is_relative_to(base.resolve()):
            return path
    return None


def _uncertain_labels(column: pd.Series, csv_path: Path, name: str) -> pd.Series:
    values = pd.to_numeric(column, errors="coerce")
    bad = column.notna() & ~values.isin([1.0, 0.0, -1.0])
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise LowmedError(
            f"{csv_path}: row {row + 2}, column {name!r}: value {column.iloc[row]!r} is not 1, 0, -1 or empty"
        )
    return values


# --- NIH ChestX-ray14 --------------------------------------------------------------------------


def read_nih(src: Path) -> SourceRecords:
    table, entry_path, root = _metadata_table(
        src, "Data_Entry_2017*.csv", ["Image Index", "Finding Labels", "Patient ID"], "Image Index"
    )
    test_list, train_list = _find_one(root, "test_list.txt"), _find_one(root, "train_val_list.txt")
    official_test = set(test_list.read_text().split()) if test_list and train_list else None
    images = _index_images(root, by="name")
    rows, excluded = [], []
    for line, record in enumerate(table.to_dict("records"), start=2):
        name = str(record["Image Index"])
        findings = [f for f in str(record["Finding Labels"]).split("|") if f != "No Finding"]
        unknown = [f for f in findings if f not in NIH_FINDINGS]
        if unknown:
            raise LowmedError(
                f"{entry_path}: row {line}: unknown finding {unknown[0]!r}; "
                f"expected 'No Finding' or any of {', '.join(NIH_FINDINGS)}"
            )
        path = images.get(name)
        if path is None:
            excluded.append({"path": name, "reason": "listed in Data_Entry CSV, image file not found"})
            continue
        split = None if official_test is None else ("test" if name in official_test else "train")
        row: dict[str, Any] = {"path": str(path), "group": f"patient{record['Patient ID']}", "given_split": split}
        row.update({finding: int(finding in findings) for finding in NIH_FINDINGS})
        for key in ("Patient Age", "Patient Gender", "View Position"):
            if key in record:
                row[key] = record[key]
        rows.append(row)
    notes = (
        ["official test_list.txt is the test split; val is made from train_val by patient"]
        if official_test is not None
        else ["no official split lists: lowmed makes train/val/test by patient"]
    )
    return SourceRecords("nih", "multilabel", list(NIH_FINDINGS), pd.DataFrame(rows), notes, excluded)


# --- generic CSV -------------------------------------------------------------------------------


def read_csv_dataset(src: Path, columns: CsvColumns, *, allow_outside_root: bool = False) -> SourceRecords:
    if not src.is_file():
        raise LowmedError(f"{src}: the csv format needs the CSV file itself as SRC")
    root = src.parent.resolve()
    label_columns = columns.labels or ([columns.label] if columns.label else [])
    if not label_columns:
        raise LowmedError("the csv format needs --label-column or --label-columns")
    wanted = [columns.path, *label_columns] + [c for c in (columns.group, columns.split) if c]
    table = _read_csv(src, required=wanted)
    _refuse_blank(table, [columns.path], src)
    _refuse_duplicates(table, columns.path, src)
    multilabel = columns.labels is not None and len(columns.labels) > 1
    if multilabel:
        for name in label_columns:
            table[name] = _uncertain_labels(table[name], src, name)
    else:
        _refuse_blank(table, label_columns, src)
    rows = []
    for line, record in enumerate(table.to_dict("records"), start=2):
        path = _row_path(root, record[columns.path], f"{src}: row {line}", allow_outside_root)
        split = None
        if columns.split:
            split = _SPLIT_ALIASES.get(str(record[columns.split]).strip().lower())
            if split is None:
                raise LowmedError(
                    f"{src}: row {line}, column {columns.split!r}: {record[columns.split]!r} "
                    "is not a split name (train, val, test)"
                )
        row = {
            "path": str(path),
            "given_split": split,
            "group": str(record[columns.group]) if columns.group else str(record[columns.path]),
            "group_given": bool(columns.group),
        }
        if multilabel:
            row.update({name: record[name] for name in label_columns})
        else:
            row["label"] = str(record[label_columns[0]])
        rows.append(row)
    records = pd.DataFrame(rows)
    if multilabel:
        return SourceRecords("csv", "multilabel", list(label_columns), records)
    classes = sorted(records["label"].unique())
    if len(classes) < 2:
        raise LowmedError(
            f"{src}: column {label_columns[0]!r} has {len(classes)} distinct label(s); expected at least 2"
        )
    return SourceRecords("csv", single_label_task(classes), classes, records)


def read_unlabelled(src: Path, columns: CsvColumns, *, allow_outside_root: bool = False) -> SourceRecords:
    """Images without labels: every file below a folder (its Kermany-style patient, else the file, as its group), or
    a CSV's path column (``--path-column``) with an optional group column (``--group-column``, or ``group``)."""
    if src.is_dir():
        rows = [
            {
                "path": str(path),
                "given_split": None,
                "group": kermany_group(path.name) or path.relative_to(src).as_posix(),
                "group_given": kermany_group(path.name) is not None,
            }
            for path in list_files(src)
        ]
        return SourceRecords("unlabelled", "unlabelled", [], pd.DataFrame(rows), ["images without labels: a folder"])
    table = _read_csv(src, required=[columns.path])
    group = columns.group or ("group" if "group" in table.columns else None)
    if group is not None and group not in table.columns:
        raise LowmedError(f"{src}: no column {group!r}; it has {', '.join(map(str, table.columns))}")
    _refuse_blank(table, [columns.path], src)
    _refuse_duplicates(table, columns.path, src)
    root = src.parent.resolve()
    rows = []
    for line, record in enumerate(table.to_dict("records"), start=2):
        path = _row_path(root, record[columns.path], f"{src}: row {line}", allow_outside_root)
        rows.append(
            {
                "path": str(path),
                "given_split": None,
                "group": str(record[group]) if group else str(record[columns.path]),
                "group_given": bool(group),
            }
        )
    note = f"images without labels: a CSV of paths{f', grouped by {group!r}' if group else ''}"
    return SourceRecords("unlabelled", "unlabelled", [], pd.DataFrame(rows), [note])


# --- shared helpers ----------------------------------------------------------------------------


def _metadata_table(
    src: Path, pattern: str, required: list[str], image_id: str | None
) -> tuple[pd.DataFrame, Path, Path]:
    """The metadata CSV (SRC itself, or found in SRC or one level down), with its required columns filled in and
    each ``image_id`` once (None: an image may have several rows); also the folder below which the images are
    searched."""
    path = src if src.is_file() else _find_one(src, pattern)
    if path is None:
        raise LowmedError(f"{src}: {pattern.replace('*', '')} not found")
    table = _read_csv(path, required=required)
    _refuse_blank(table, required, path)
    if image_id is not None:
        _refuse_duplicates(table, image_id, path)
    return table, path, path.parent if src.is_file() else src


def _csv_header(path: Path) -> list[str]:
    """A CSV's column names (none for a folder or a file that does not read as CSV)."""
    if not path.is_file():
        return []
    try:
        return [str(c) for c in read_csv_file(path, str(path), nrows=0).columns]
    except LowmedError:
        return []


def _find_one(root: Path, pattern: str) -> Path | None:
    direct = sorted(root.glob(pattern))
    if direct:
        return direct[0]
    nested = sorted(root.glob(f"*/{pattern}"))
    return nested[0] if nested else None


def _read_csv(path: Path, required: list[str]) -> pd.DataFrame:
    table = read_csv_file(path, str(path), dtype=str, keep_default_na=True)
    if table.empty:
        raise LowmedError(f"{path}: a header and no rows; expected one row per image")
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise LowmedError(
            f"{path}: missing column(s) {', '.join(map(repr, missing))}; found {', '.join(map(repr, table.columns))}"
        )
    return table


def _row_path(root: Path, given, where: str, allow_outside_root: bool) -> Path:
    """A CSV row's image path, resolved against the CSV's folder; one outside it only when the user allows it."""
    path = (root / str(given)).resolve()
    if not allow_outside_root and not path.is_relative_to(root):
        raise LowmedError(
            f"{where}: path {given!r} points outside {root}; pass --allow-outside-root if that is intended"
        )
    return path


def _refuse_blank(table: pd.DataFrame, columns: list[str], path: Path) -> None:
    for column in columns:
        blank = table[column].isna() | (table[column].astype(str).str.strip() == "")
        if blank.any():
            row = int(np.flatnonzero(blank.to_numpy())[0]) + 2
            raise LowmedError(f"{path}: row {row}, column {column!r} is empty")


def _refuse_duplicates(table: pd.DataFrame, column: str, path: Path) -> None:
    duplicated = table[column].duplicated()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated.to_numpy())[0]) + 2
        raise LowmedError(f"{path}: row {row}: {column} {table[column].iloc[row - 2]!r} appears more than once")


def _index_images(root: Path, by: str = "stem") -> dict[str, Path]:
    """Image files anywhere below ``root`` by stem (or name); the first in sorted order wins."""
    index: dict[str, Path] = {}
    for path in list_files(root):
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            index.setdefault(path.stem if by == "stem" else path.name, path)
    return index
