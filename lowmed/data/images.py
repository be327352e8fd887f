"""Opening, verifying and normalising medical image files of any common mode."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from lowmed.data.dicom import DICOM_EXTENSIONS, is_dicom, read_dicom
from lowmed.errors import LowmedError

IMAGE_EXTENSIONS = {
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".tif",
    ".tiff",
    ".gif",
    ".webp",
    ".pgm",
    ".ppm",
    *DICOM_EXTENSIONS,
}
# Files operating systems and archivers leave behind; never worth a word in the report.
_SYSTEM_FILES = {".ds_store", "thumbs.db", "desktop.ini", "icon\r"}
_SKIPPED_DIRS = {"__macosx"}


def is_system_file(path: Path) -> bool:
    name = path.name.lower()
    return name in _SYSTEM_FILES or name.startswith(".")


def list_files(root: Path) -> list[Path]:
    """Every file below ``root`` (sorted, hidden and system files and folders skipped)."""
    found: list[Path] = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and d.lower() not in _SKIPPED_DIRS)
        found.extend(Path(directory) / f for f in sorted(files) if not is_system_file(Path(f)))
    return found


def refuse_undecodable_names(paths: Iterable[str | Path], where: str | Path) -> None:
    """A file name that is not valid UTF-8 cannot be written to a manifest or a predictions CSV."""
    bad = [str(path) for path in paths if not _is_utf8(str(path))]
    if bad:
        raise LowmedError(
            f"{where}: {len(bad)} file name(s) are not valid UTF-8 (e.g. {os.fsencode(bad[0])!r}); "
            "rename them to UTF-8 (convmv -f latin1 -t utf8 does it for a whole tree)"
        )


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def to_standard_mode(image: Image.Image) -> Image.Image:
    """Return the image as 8-bit greyscale ("L") or "RGB", whatever mode it came in.

    16-bit and float greyscale (common for X-rays exported from DICOM) are windowed to their own
    min..max, because clipping at 255 would turn most of them white.
    """
    if image.mode in ("L", "RGB"):
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        pixels = np.asarray(image, dtype=np.float32)
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
        return Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    if image.mode in ("1", "LA"):
        return image.convert("L")
    return image.convert("RGB")


def load_image(path: str | os.PathLike, size_hint: int | None = None) -> Image.Image:
    """Decode a file to an "L" or "RGB" image (raises OSError / Pillow errors on bad files).

    With ``size_hint`` a JPEG is decoded at the smallest power-of-two scale still at least that big, which makes
    multi-megapixel originals several times cheaper to read.
    """
    dicom = _dicom_bytes(Path(path))
    if dicom is not None:
        return read_dicom(dicom)[0]
    with Image.open(path) as image:
        return _decode(image, size_hint)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file, DICOM included (a DICOM file is decoded; other formats' headers do)."""
    dicom = _dicom_bytes(Path(path))
    if dicom is not None:
        return read_dicom(dicom)[0].size
    with Image.open(path) as image:
        return image.size


def _dicom_bytes(path: Path) -> bytes | None:
    """A DICOM file's bytes (known by its extension, or, without a known image extension, its marker); else None."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS - DICOM_EXTENSIONS:
        return None
    data = path.read_bytes()
    return data if is_dicom(data, suffix) else None


def _decode(image: Image.Image, size_hint: int | None) -> Image.Image:
    """Load an opened file (a JPEG at a reduced DCT scale when ``size_hint`` allows) in a standard mode."""
    if size_hint and image.format == "JPEG":
        image.draft(image.mode, (size_hint, size_hint))
    image.load()
    return to_standard_mode(image)


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    scale = size / min(width, height)
    if scale >= 1:
        return image
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(new_size, Image.Resampling.BILINEAR, reducing_gap=3.0)


def inspect_image(path: str, cache_dir: str | None = None, cache_size: int | None = None) -> dict:
    """Open and fully decode one file; report what it is or why it is unusable.

    With ``cache_dir`` and ``cache_size`` also writes a resized copy (shorter side ``cache_size``)
    named by the file's content hash, so identical files share one cached copy.
    Runs in worker processes: takes and returns plain values only.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return {"ok": False, "reason": f"cannot read file: {exc.strerror or exc}"}
    if not data:
        return {"ok": False, "reason": "empty file (0 bytes)"}
    sha1 = hashlib.sha1(data).hexdigest()
    if is_dicom(data, Path(path).suffix):
        try:
            standard, tags = read_dicom(data)
        except ValueError as exc:
            return {"ok": False, "reason": str(exc)}
        result = {"ok": True, "reason": None, "sha1": sha1, "width": standard.width, "height": standard.height}
        return _cached(result | {"mode": "DICOM", **tags}, standard, cache_dir, cache_size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                original_mode, (width, height) = image.mode, image.size
                standard = _decode(image, cache_size)
    except Image.DecompressionBombError as exc:
        return {"ok": False, "reason": f"decompression bomb refused ({exc})"}
    except UnidentifiedImageError:
        return {"ok": False, "reason": "not an image file"}
    except (OSError, SyntaxError, ValueError) as exc:
        return {"ok": False, "reason": f"unreadable image ({exc})"}
    result = {"ok": True, "reason": None, "sha1": sha1, "width": width, "height": height, "mode": original_mode}
    return _cached(result, standard, cache_dir, cache_size)


def _cached(result: dict, standard: Image.Image, cache_dir: str | None, cache_size: int | None) -> dict:
    """``result`` with the resized copy written, when asked, named by the file's content hash."""
    sha1 = result["sha1"]
    if cache_dir and cache_size:
        relative = Path("cache") / sha1[:2] / f"{sha1}.png"
        target = Path(cache_dir) / relative
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
            resize_shorter_side(standard, cache_size).save(tmp, format="PNG", compress_level=1)
            os.replace(tmp, target)
        result["cache_path"] = relative.as_posix()
    return result
