"""DICOM files as images: pixel values to 8 bits as a radiologist's viewer shows them, and the few tags lowmed keeps.

The pixel pipeline follows the standard's order: stored values → modality LUT (rescale slope and intercept) → VOI
LUT, or the first window centre/width, or else the image's own min–max → MONOCHROME1 inverted (there, bright means
low values) → 8 bits. Compressed transfer syntaxes are decoded by pydicom's plugins (the ``dicom`` extra installs
pylibjpeg with its OpenJPEG and libjpeg plugins; RLE needs none). Multi-frame files are refused.

Only three tags leave this module: PatientID (the patient group, where the layout gives none; ``prepare
--hash-groups`` replaces it by a salted hash), ViewPosition and BodyPartExamined. Names, dates of birth, accession
numbers and every other tag stay in the file.
"""

from __future__ import annotations

import importlib.util
import io

import numpy as np
from PIL import Image

from lowmed.errors import LowmedError

DICOM_EXTENSIONS = {".dcm", ".dicom"}
KEPT_TAGS = {"PatientID": "patient_id", "ViewPosition": "view_position", "BodyPartExamined": "body_part"}


def is_dicom(data: bytes, suffix: str = "") -> bool:
    """A DICOM file: its extension, or the "DICM" marker after the 128-byte preamble (extension-less files)."""
    return suffix.lower() in DICOM_EXTENSIONS or data[128:132] == b"DICM"


def _require_pydicom() -> None:
    if importlib.util.find_spec("pydicom") is None:
        raise LowmedError(
            "DICOM files need pydicom, which is not installed; install it with: pip install 'lowmed[dicom]'"
        )


def read_dicom(data: bytes) -> tuple[Image.Image, dict[str, str]]:
    """The image ("L", or "RGB" for colour files) and the kept tags of one DICOM file's bytes.

    Raises ValueError with the reason a file is unusable (not DICOM, no pixels, multi-frame, a required tag missing
    or malformed, truncated pixels, no decoder). pydicom reads damaged files lazily and raises many kinds of error
    from deep inside; every one of them is a reason to exclude this file, never to stop the batch."""
    _require_pydicom()
    import pydicom

    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=True)
        has_pixels = "PixelData" in dataset
    except Exception as exc:  # noqa: BLE001 — see the docstring
        raise ValueError(f"not a readable DICOM file ({_first_line(exc)})") from None
    if not has_pixels:
        marked = data[128:132] == b"DICM"
        raise ValueError("DICOM file without pixel data" if marked else f"not a DICOM file ({_what_it_is(data)})")
    try:
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
    except Exception:  # noqa: BLE001
        raise ValueError(f"malformed DICOM tag NumberOfFrames ({dataset['NumberOfFrames'].value!r})") from None
    if frames > 1:
        raise ValueError(f"multi-frame DICOM ({frames} frames); lowmed reads single images")
    stored = _pixel_array(dataset)
    tags = {kept: str(dataset.get(tag, "") or "").strip() for tag, kept in KEPT_TAGS.items()}
    photometric = str(dataset.get("PhotometricInterpretation", ""))
    if photometric == "PALETTE COLOR":
        raise ValueError("PALETTE COLOR DICOM; lowmed reads greyscale (MONOCHROME1/2) and RGB/YBR files")
    if stored.ndim == 3:  # colour (pydicom returns RGB, converting YBR)
        return Image.fromarray(np.asarray(stored, dtype=np.uint8), mode="RGB"), tags
    try:
        shown = display_values(stored, dataset)
    except Exception as exc:  # noqa: BLE001 — malformed LUT, rescale or window tags
        raise ValueError(f"malformed DICOM display tags (rescale, window or VOI LUT: {_first_line(exc)})") from None
    return Image.fromarray(np.round(shown * 255).astype(np.uint8), mode="L"), tags


def _pixel_array(dataset) -> np.ndarray:
    """The stored pixel values, or ValueError naming what is missing, damaged or undecodable."""
    syntax = dataset.file_meta.get("TransferSyntaxUID")
    try:
        return dataset.pixel_array
    except AttributeError as exc:  # pydicom: "Missing required element: (0028,0010) 'Rows'"
        raise ValueError(f"incomplete DICOM header ({_first_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001
        reason = _first_line(exc)
        if syntax is not None and getattr(syntax, "is_compressed", False):
            name = getattr(syntax, "name", str(syntax))
            raise ValueError(
                f"cannot decode the pixels ({name}: {reason}); install its decoder: "
                f"pip install {_decoder(name)} (or pip install 'lowmed[dicom]' for all of them)"
            ) from None
        raise ValueError(f"damaged or truncated pixel data ({reason})") from None


def _what_it_is(data: bytes) -> str:
    """A short word on a file that claims to be DICOM and is not (an image under the wrong name, or text)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return f"a {image.format} image"
    except Exception:  # noqa: BLE001 — not an image either
        pass
    return "no 'DICM' marker and no pixel data"


def _first_line(exc: Exception) -> str:
    """An exception's message to its first sentence (pydicom's run on for lines)."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text.split(" - ")[0]


def _decoder(transfer_syntax: str) -> str:
    """The pylibjpeg plugin that decodes a compressed transfer syntax (by its name)."""
    if "2000" in transfer_syntax or "HTJ2K" in transfer_syntax:
        return "pylibjpeg pylibjpeg-openjpeg"
    if "JPEG" in transfer_syntax:
        return "pylibjpeg pylibjpeg-libjpeg"
    return "pylibjpeg"


def display_values(stored: np.ndarray, dataset) -> np.ndarray:
    """A greyscale image's stored values as displayed, in [0, 1] (1 = bright)."""
    from pydicom.pixels import apply_modality_lut

    values = apply_modality_lut(stored, dataset)
    if "VOILUTSequence" in dataset:
        shown = voi_lut(values, dataset.VOILUTSequence[0])
    elif "WindowCenter" in dataset and "WindowWidth" in dataset:
        shown = window(values, _first(dataset.WindowCenter), _first(dataset.WindowWidth), dataset.get("VOILUTFunction"))
    else:
        low, high = float(values.min()), float(values.max())
        shown = (values - low) / (high - low) if high > low else np.zeros_like(values)
    shown = np.clip(shown, 0, 1)
    return 1 - shown if dataset.get("PhotometricInterpretation") == "MONOCHROME1" else shown


def voi_lut(values: np.ndarray, item) -> np.ndarray:
    """A VOI LUT (PS3.3 C.11.2.1.1) to [0, 1]: values below the first mapped one take the first entry, above the
    last the last. (pydicom 3.0's ``apply_voi_lut`` indexes an 8-bit LUT with 8-bit integers, which wraps any LUT
    longer than 256 entries.)"""
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 2**16
    data = item.LUTData
    table = np.frombuffer(data, dtype="<u2") if isinstance(data, bytes) else np.asarray(data)
    index = np.clip(np.rint(values) - first, 0, entries - 1).astype(np.int64)
    return table[:entries][index] / (2**bits - 1)


def window(values: np.ndarray, centre: float, width: float, function: str | None = None) -> np.ndarray:
    """The standard's VOI window (PS3.3 C.11.2.1.2) to [0, 1]: LINEAR (the default), LINEAR_EXACT or SIGMOID."""
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        return 1 / (1 + np.exp(-4 * (values - centre) / width))
    if function == "LINEAR_EXACT":
        return np.clip((values - centre) / width + 0.5, 0, 1)
    if width <= 1:
        return (values > centre - 0.5).astype(np.float64)
    return np.clip((values - (centre - 0.5)) / (width - 1) + 0.5, 0, 1)


def _first(value) -> float:
    """A window tag's first value (the tags may hold several windows)."""
    try:
        return float(value[0])
    except TypeError:
        return float(value)
