"""lowmed subsample: a small training set of N images per class; val and test untouched."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from lowmed.cli._options import Quiet, Seed, Verbose


def subsample_command(
    data: Annotated[
        Path, typer.Argument(help="Prepared dataset dir, or a raw dataset (prepared with defaults first).")
    ],
    per_class: Annotated[
        int,
        typer.Option(
            "--per-class",
            "-n",
            help=(
                "Training images per class. Multi-label data: about N positives per finding (greedy), "
                "plus N images with no finding."
            ),
        ),
    ],
    seed: Seed = 0,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="Subset manifest to write (default: DATA/subsets/subset-N-seedK.csv)."),
    ] = None,
    strict: Annotated[bool, typer.Option(help="Fail when a class has fewer than N training images.")] = False,
    materialize: Annotated[
        Optional[Path],
        typer.Option(help="Also write a Kaggle-style DIR/{train,val,test}/{class}/ tree (hard links, else copies)."),
    ] = None,
    prepared_dir: Annotated[
        Optional[Path], typer.Option(help="Where a raw DATA is prepared (default: ./lowmed-data/<name>).")
    ] = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Keep N training images per class, spread over patients; nested in N for one seed."""
    from lowmed.cli._render import counts_table, stdout
    from lowmed.console import log
    from lowmed.data.subsample import subsample

    subset = subsample(
        data,
        per_class,
        seed=seed,
        out=out,
        strict=strict,
        materialize=materialize,
        prepared_dir=prepared_dir,
    )
    sidecar = subset.record
    counts = {"train available": sidecar.train_available["counts"], **sidecar.counts}
    images = {"train available": sidecar.train_available["images"], **sidecar.images}
    stdout.print(counts_table(f"subset: {per_class} per class, seed {seed}", counts, images))
    for message in subset.warnings:
        log.warning(message)
    stdout.print(f"Wrote {subset.path} (and {subset.path.with_suffix('.yaml').name})")
    if materialize:
        stdout.print(f"Wrote folder tree {materialize}")
