"""Small real image files in every native layout lowmed reads, including the broken ones."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from lowmed.data.formats import CHEXPERT_FINDINGS, NIH_FINDINGS


def image_array(seed: int, size: int = 32, label: int = 0) -> np.ndarray:
    """A unique noisy picture; ``label`` sets a bright bar's position so classes are separable."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 120, (size, size), dtype=np.uint8)
    row = (label * 7 + 4) % (size - 4)
    pixels[row : row + 4, :] = 230
    return pixels


def write_image(path: Path, seed: int, size: int = 32, mode: str = "L", label: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    grey = image_array(seed, size, label)
    if mode == "I;16":
        image = Image.fromarray(grey.astype(np.uint16) * 16)  # 12-bit range, as DICOM exports often are
    else:
        image = Image.fromarray(grey, mode="L").convert(mode)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    image.save(path, format=fmt)
    return path


def write_broken_files(folder: Path) -> dict[str, Path]:
    """One file of each kind prepare must exclude, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    zero = folder / "zero.jpeg"
    zero.write_bytes(b"")
    text = folder / "notes.jpeg"
    text.write_text("this is not an image")
    good = io.BytesIO()
    Image.fromarray(image_array(999, 64)).save(good, format="JPEG")
    truncated = folder / "truncated.jpeg"
    truncated.write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (folder / ".DS_Store").write_bytes(b"\x00\x01")
    return {"zero": zero, "text": text, "truncated": truncated}


def make_kermany(root: Path, per_class: dict[str, dict[str, int]] | None = None, size: int = 32) -> Path:
    """``root/{train,val,test}/{NORMAL,PNEUMONIA}/`` with Kermany-style names: two images per patient."""
    per_class = per_class or {
        "train": {"NORMAL": 40, "PNEUMONIA": 40},
        "val": {"NORMAL": 4, "PNEUMONIA": 4},
        "test": {"NORMAL": 20, "PNEUMONIA": 20},
    }
    seed = 0
    for split, counts in per_class.items():
        for label_index, (label, count) in enumerate(counts.items()):
            for i in range(count):
                seed += 1
                patient = seed // 2 + 1000 * (split == "test")
                if label == "NORMAL":
                    name = f"IM-{patient:04d}-{i % 2 + 1:04d}.jpeg"
                else:
                    name = f"person{patient}_bacteria_{seed}.jpeg"
                write_image(root / split / label / name, seed, size, label=label_index)
    return root


def make_ham10000(root: Path, lesions_per_class: int = 12, size: int = 32) -> Path:
    """HAM10000_metadata.csv and images split over two part folders; 1-3 images per lesion."""
    classes = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    rows, seed = [], 0
    for label_index, dx in enumerate(classes):
        for lesion in range(lesions_per_class):
            for _ in range(1 + lesion % 3):
                seed += 1
                image_id = f"ISIC_{seed:07d}"
                part = "HAM10000_images_part_1" if seed % 2 else "HAM10000_images_part_2"
                write_image(root / part / f"{image_id}.jpg", seed, size, mode="RGB", label=label_index)
                rows.append(
                    {
                        "lesion_id": f"HAM_{label_index:02d}{lesion:05d}",
                        "image_id": image_id,
                        "dx": dx,
                        "dx_type": "histo",
                        "age": "50.0",
                        "sex": "male",
                        "localization": "back",
                    }
                )
    pd.DataFrame(rows).to_csv(root / "HAM10000_metadata.csv", index=False)
    return root


def make_chexpert(root: Path, patients: int = 30, size: int = 32) -> Path:
    """``root/CheXpert-v1.0-small/{train,valid}.csv`` + images; frontal and lateral views, -1/blank labels."""
    base = root / "CheXpert-v1.0-small"
    rng = np.random.default_rng(0)
    for csv_name, split_dir, count in (("train.csv", "train", patients), ("valid.csv", "valid", max(4, patients // 5))):
        rows = []
        for p in range(count):
            patient = f"patient{p + (0 if split_dir == 'train' else 50000):05d}"
            for view in ("frontal", "lateral"):
                relative = f"CheXpert-v1.0-small/{split_dir}/{patient}/study1/view1_{view}.jpg"
                write_image(root / relative, len(rows) + 7919 * p + (split_dir == "valid") * 10**6, size)
                row = {
                    "Path": relative,
                    "Sex": "Female",
                    "Age": 60,
                    "Frontal/Lateral": view.capitalize(),
                    "AP/PA": "AP" if view == "frontal" else "",
                }
                for finding in CHEXPERT_FINDINGS:
                    row[finding] = rng.choice([1.0, 0.0, -1.0, np.nan], p=[0.3, 0.3, 0.1, 0.3])
                rows.append(row)
        pd.DataFrame(rows).to_csv(base / csv_name, index=False)
    return root


def make_nih(root: Path, patients: int = 20, size: int = 32) -> Path:
    """Data_Entry_2017.csv (with its trailing-comma header) and PNG images below ``images/``."""
    rng = np.random.default_rng(1)
    lines = [
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
    ]
    seed = 0
    for patient in range(1, patients + 1):
        for follow_up in range(1 + patient % 3):
            seed += 1
            name = f"{patient:08d}_{follow_up:03d}.png"
            write_image(root / "images" / name, seed, size)
            findings = [f for f in NIH_FINDINGS if rng.random() < 0.15] or ["No Finding"]
            lines.append(f"{name},{'|'.join(findings)},{follow_up},{patient},50,M,PA,2048,2048,0.14,0.14")
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    return root
