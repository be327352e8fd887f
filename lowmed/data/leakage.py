"""The leakage guard between a pretraining corpus and the labelled dataset it is pretrained for.

No test image may shape a pretrained model, and no validation image either (validation chooses checkpoints and
tunes recipes). A corpus image is the target's when its content hash (the SHA-1 ``prepare`` records) equals one of
the target's images, or when its patient/lesion group is one of the target's groups (where both name groups the
same way). Overlap with the target's val or test split is removed from the corpus (or, under ``--strict``,
refused); overlap with its train split is said and kept, since a clinic's archive holds the images it labelled.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import pandas as pd

from lowmed.console import warn, warn_or_refuse
from lowmed.data.manifest import PreparedDataset

GUARDED_SPLITS = ("val", "test")  # what a corpus may never share with its target


@dataclass
class CorpusOverlap:
    """What a corpus shares with its target: per target split, corpus images identical to a target image (by
    content hash) and corpus images of a target group; what was removed and some examples."""

    target: str  # the target's prepared dir (its name)
    target_manifest_sha256: str | None
    by_hash: dict[str, int] = field(default_factory=dict)
    by_group: dict[str, int] = field(default_factory=dict)
    removed: int = 0  # corpus images dropped for sharing an image or a group with the target's val or test split
    kept_from_train: int = 0  # corpus images that are (or share a group with) the target's train images
    examples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def sentence(self) -> str:
        guarded = ", ".join(
            f"{split} {self.by_hash.get(split, 0)} by content and {self.by_group.get(split, 0)} by group"
            for split in GUARDED_SPLITS
        )
        return (
            f"leakage guard against {self.target}: {self.removed} corpus image(s) removed ({guarded}); "
            f"{self.kept_from_train} shared with its train split, kept"
        )


def guard_corpus(
    corpus: PreparedDataset, target: PreparedDataset, strict: bool, what: str = "the corpus"
) -> tuple[pd.DataFrame, CorpusOverlap]:
    """The corpus's manifest rows less every image it shares with the target's val or test split (by content or by
    group), and the record of what was found; under ``strict`` such overlap is refused instead (exit 2)."""
    rows = corpus.manifest
    overlap = CorpusOverlap(target=target.root.name, target_manifest_sha256=target.info.manifest_sha256)
    guarded = pd.Series(False, index=rows.index)
    shared_with_train = pd.Series(False, index=rows.index)
    for split in ("train", *GUARDED_SPLITS):
        part = target.split(split)
        if part.empty:
            continue
        same_image = rows["sha1"].isin(set(part["sha1"])) if "sha1" in rows and "sha1" in part else False
        same_group = rows["group"].astype(str).isin(set(part["group"].astype(str)))
        overlap.by_hash[split] = int(pd.Series(same_image, index=rows.index).sum())
        overlap.by_group[split] = int(same_group.sum())
        hit = same_group | same_image
        if split in GUARDED_SPLITS:
            guarded |= hit
        else:
            shared_with_train |= hit
    overlap.removed = int(guarded.sum())
    overlap.kept_from_train = int((shared_with_train & ~guarded).sum())
    overlap.examples = rows.loc[guarded, "path"].head(5).tolist()
    if overlap.removed:
        warn_or_refuse(
            f"{what} shares {overlap.removed} image(s) with the val or test split of {target.root} (by content "
            f"or patient group, e.g. {overlap.examples[0]}); "
            + ("they are removed from it" if not strict else "remove them from the corpus"),
            strict,
        )
    elif overlap.kept_from_train:
        warn(
            f"{what} holds {overlap.kept_from_train} of the train images (or patients) of {target.root}; kept (no "
            "validation or test image is among them)"
        )
    return rows[~guarded].reset_index(drop=True), overlap
