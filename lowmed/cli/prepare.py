"""lowmed prepare: read a raw dataset in its native layout and write a prepared dir."""

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from lowmed.cli._options import OutDir, Overwrite, Quiet, Seed, Strict, Verbose, Workers
from lowmed.errors import LowmedError

_SHOWN_EXCLUSIONS = 10


def prepare_command(
    src: Annotated[
        Optional[Path],
        typer.Argument(help="Raw dataset: a folder in its native layout, or a CSV file.", show_default=False),
    ] = None,
    out: OutDir = None,
    demo: Annotated[
        bool,
        typer.Option(
            "--demo",
            help=(
                "Write lowmed's synthetic demo data (a pneumonia-like target task and a multi-label pretraining "
                "corpus) "
                "and prepare both into --out (default lowmed-data/demo)."
            ),
        ),
    ] = False,
    format: Annotated[
        str, typer.Option("--format", "-f", help="auto | imagefolder | ham10000 | chexpert | nih | rsna | csv")
    ] = "auto",
    seed: Seed = 0,
    val_fraction: Annotated[float, typer.Option(help="Share of images for a val split lowmed makes.")] = 0.1,
    test_fraction: Annotated[float, typer.Option(help="Share of images for a test split lowmed makes.")] = 0.25,
    min_val_per_class: Annotated[
        int, typer.Option(help="A given val split with fewer images of any class is folded into train and rebuilt.")
    ] = 20,
    cache_size: Annotated[
        Optional[int],
        typer.Option(help="Also write resized copies (shorter side N px) so training never decodes the originals."),
    ] = None,
    workers: Workers = None,
    frontal_only: Annotated[
        bool, typer.Option(help="Keep frontal views only: CheXpert's Frontal/Lateral, a DICOM file's ViewPosition.")
    ] = False,
    uncertain: Annotated[
        str, typer.Option(help="Multi-label: how uncertain (-1) labels train: ignore (masked) | zeros | ones.")
    ] = "ignore",
    path_column: Annotated[str, typer.Option(help="csv format: column with image paths.")] = "path",
    label_column: Annotated[str, typer.Option(help="csv format: column with the class name.")] = "label",
    label_columns: Annotated[
        Optional[str], typer.Option(help="csv format, multi-label: comma-separated finding columns (1/0/-1/empty).")
    ] = None,
    group_column: Annotated[Optional[str], typer.Option(help="csv format: patient/lesion id column.")] = None,
    split_column: Annotated[Optional[str], typer.Option(help="csv format: column with train/val/test.")] = None,
    allow_outside_root: Annotated[
        bool, typer.Option(help="csv format: allow image paths outside the CSV's folder.")
    ] = False,
    hash_groups: Annotated[
        bool,
        typer.Option(
            help="Write every patient/lesion group (e.g. a DICOM PatientID) as a salted hash; the salt is not kept."
        ),
    ] = False,
    role: Annotated[
        str,
        typer.Option(
            help="full (train/val/test as given or made) | test (an external test set: every image) | unlabelled "
            "(images without labels, for lowmed pretrain; also taken for a folder of images without class folders, "
            "or a CSV without its label column)"
        ),
    ] = "full",
    normalize_labels: Annotated[
        bool, typer.Option(help="Merge labels that differ only by case or surrounding spaces (else an error).")
    ] = False,
    strict: Strict = False,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Verify every image (DICOM too), remove duplicates and leakage, make missing splits by patient, write
    manifest.csv and dataset.yaml."""
    from lowmed.contracts import DEFAULT_PREPARED_ROOT
    from lowmed.data.formats import CsvColumns
    from lowmed.data.prepare import prepare
    from lowmed.data.synthetic import prepare_demo

    if demo:
        for dataset in prepare_demo(out or DEFAULT_PREPARED_ROOT / "demo").values():
            render_prepared(dataset)
        return
    if src is None:
        raise LowmedError("give SRC (a raw dataset folder or CSV file), or --demo")
    columns = CsvColumns(
        path=path_column,
        label=label_column,
        group=group_column,
        split=split_column,
        labels=[c.strip() for c in label_columns.split(",")] if label_columns else None,
    )
    out = out or DEFAULT_PREPARED_ROOT / src.expanduser().resolve().name
    dataset = prepare(
        src,
        out,
        format=format,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        min_val_per_class=min_val_per_class,
        cache_size=cache_size,
        workers=workers,
        frontal_only=frontal_only,
        uncertain=uncertain,
        csv_columns=columns,
        allow_outside_root=allow_outside_root,
        hash_groups=hash_groups,
        role=role,
        normalize_labels=normalize_labels,
        strict=strict,
        overwrite=overwrite,
    )
    render_prepared(dataset)


def render_prepared(dataset) -> None:
    from lowmed.cli._render import counts_table, stdout
    from lowmed.console import log

    info = dataset.info
    images = dataset.manifest["split"].value_counts().to_dict()
    what = {"multilabel": "positives per finding", "unlabelled": "images without labels"}.get(
        dataset.task, "images per class"
    )
    stdout.print(counts_table(f"{info.source_format} · {dataset.task} · {what}", info.counts, images))
    stdout.print("groups (patients/lesions): " + ", ".join(f"{s} {n}" for s, n in info.groups.items()))
    stdout.print("splits: " + ", ".join(f"{s} {o}" for s, o in info.splits.origin.items()))
    for note in info.notes + ([info.splits.val_rebuilt] if info.splits.val_rebuilt else []):
        stdout.print(f"[dim]note: {escape(note)}")
    for message in info.warnings:
        log.warning(message)
    excluded = info.excluded
    if excluded:
        stdout.print(f"[yellow]{len(excluded)} file(s) excluded[/] (all listed in dataset.yaml):")
        for item in excluded[:_SHOWN_EXCLUSIONS]:
            stdout.print(f"  {item['path']}: {item['reason']}", highlight=False, soft_wrap=True, markup=False)
        if len(excluded) > _SHOWN_EXCLUSIONS:
            stdout.print(f"  … and {len(excluded) - _SHOWN_EXCLUSIONS} more")
    stdout.print(f"Wrote {dataset.root}/manifest.csv ({len(dataset.manifest)} images) and dataset.yaml")
