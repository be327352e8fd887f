"""The leakage guard between what shaped a pretrained model and the labelled dataset it is fine-tuned on.

No test image may shape a pretrained model, and no validation image either (validation chooses checkpoints and
tunes recipes). A pretraining image is the target's when its content hash (the SHA-1 ``prepare`` records) equals one
of the target's images, or when its patient/lesion group is one of the target's groups (where both name groups the
same way). Overlap with the target's val or test split is refused (exit 2); overlap with its train split is said
and kept, since a clinic's archive holds the images it labelled. Three things are guarded: a self-supervised
corpus, a supervised pretraining dataset, and the run behind ``--weights RUN_DIR``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lowmed.console import warn_or_refuse
from lowmed.contracts import GROUPS, CorpusOverlap, RunDir, SelfSupervisedRecord
from lowmed.data.manifest import PreparedDataset
from lowmed.errors import LowmedError

GUARDED_SPLITS = ("val", "test")  # what pretraining may never share with its target
CHECKED_NONE = "none (checked image by image)"  # train.json's pretraining_overlap status for --weights RUN_DIR


def guard_pretraining(
    trained: pd.DataFrame,
    target: PreparedDataset,
    what: str,
    strict: bool = False,
    selected: pd.DataFrame | None = None,
    say: bool = True,
) -> CorpusOverlap:
    """Refuse (exit 2) pretraining whose ``trained`` rows (manifest rows with sha1 and group) share an image or a
    group with the target's val or test split, or whose ``selected`` rows (those that chose its checkpoint) share
    one with its test split; say (``say``), and keep, what it trained on of the target's train split (``strict``:
    refuse that too).

    The target's own images in their own roles are no leak: its train images trained on, its train and val images
    choosing checkpoints (a self-supervised stage monitored on the target, a run on the same dataset), do in the
    pretraining what they do in the target's own run. What their patient ids share with its test split is then the
    target's own split's doing (Kermany's Kaggle folders reuse ``personN`` between train and test), not the
    pretraining's."""
    overlap = CorpusOverlap(target=target.root.name, target_manifest_sha256=target.info.manifest_sha256)
    # of a subset, its whole dataset's: the train images a subset leaves out are no test images either
    whole = PreparedDataset.load(target.root).manifest if target.subset is not None else target.manifest
    foreign = trained[~_own_images(trained, whole, ("train",))]  # all but the target's train images
    choosing = selected[~_own_images(selected, whole, ("train", "val"))] if selected is not None else None
    leaked: list[pd.Series] = []  # paths of pretraining images that are the target's val or test images
    chose = 0  # selected rows among the target's test images
    for split in ("train", *GUARDED_SPLITS):
        part = target.split(split)
        if part.empty:
            continue
        if split == "train":
            shared = _shared(trained, part, overlap, split)
            overlap.kept_from_train = int(shared.sum())
            overlap.examples = trained.loc[shared, "path"].head(5).tolist()
            continue
        leaked.append(foreign.loc[_shared(foreign, part, overlap, split), "path"])
        if split == "test" and choosing is not None and not choosing.empty:
            chosen = _shared(choosing, part)
            chose = int(chosen.sum())
            leaked.append(choosing.loc[chosen, "path"])
    examples = pd.concat(leaked) if leaked else pd.Series(dtype=str)
    if not examples.empty:
        counts = ", ".join(
            f"{split} {overlap.by_hash.get(split, 0)} by content and {overlap.by_group.get(split, 0)} by {GROUPS}"
            for split in GUARDED_SPLITS
        )
        chosen_text = f"; its checkpoint was chosen with {chose} of them" if chose else ""
        raise LowmedError(
            f"{what} saw images of the val or test split of {target.root} (trained on: {counts}{chosen_text}; "
            f"e.g. {examples.iloc[0]}); no validation or test image may shape a pretrained model: take them out of "
            "the pretraining data, or fine-tune on a target they are not part of"
        )
    if overlap.kept_from_train and (say or strict):
        warn_or_refuse(
            f"{what} holds {overlap.kept_from_train} of the train images (or patients) of {target.root}; kept (no "
            "validation or test image is among them)",
            strict,
            once=True,  # a study's runs from one stage say it alike
        )
    return overlap


def _own_images(rows: pd.DataFrame, manifest: pd.DataFrame, splits: tuple[str, ...]) -> pd.Series:
    """Per row: one of the ``manifest``'s images in ``splits``, by content."""
    if "sha1" not in rows or "sha1" not in manifest:
        return pd.Series(False, index=rows.index)
    return rows["sha1"].isin(set(manifest.loc[manifest["split"].isin(splits), "sha1"]))


def _shared(rows: pd.DataFrame, part: pd.DataFrame, overlap: CorpusOverlap | None = None, split: str = "") -> pd.Series:
    """Per row: an image identical to one of ``part``'s (by content hash) or of one of its groups; the counts of
    each kept in ``overlap`` under ``split``."""
    same_image = rows["sha1"].isin(set(part["sha1"])) if "sha1" in rows and "sha1" in part else False
    same_image = pd.Series(same_image, index=rows.index)
    same_group = rows["group"].astype(str).isin(set(part["group"].astype(str)))
    if overlap is not None:
        overlap.by_hash[split], overlap.by_group[split] = int(same_image.sum()), int(same_group.sum())
    return same_image | same_group


def run_shaping_rows(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The images a lowmed run's weights were trained on, and those that chose its checkpoint, as manifest rows;
    None when its data is no longer there to read. A self-supervised stage trained on its corpus, its monitor's
    target train and val images chose its epoch; a supervised run trained on its subset's (or dataset's) train rows,
    its val split chose."""
    run = RunDir(run_dir)
    summary = run.read_summary()
    try:
        if summary.kind == "self-supervised":
            record = SelfSupervisedRecord.read(run.self_supervised)
            monitor = PreparedDataset.load(record.target["prepared_dir"])
            selected = pd.concat([monitor.split("train"), monitor.split("val")], ignore_index=True)
            return PreparedDataset.load(record.corpus["prepared_dir"]).manifest, selected
        dataset = PreparedDataset.load(summary.dataset.subset or summary.dataset.prepared_dir)
        return dataset.split("train"), dataset.split("val")
    except LowmedError:
        return None
