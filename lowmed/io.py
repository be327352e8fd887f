"""Files in and out: atomic writes (a reader never sees a half-written file, a crash never leaves one), and the text
files users give (YAML, CSV) read as UTF-8, with or without a byte-order mark, or UTF-16 with one; any other
encoding is refused naming the first byte that is not UTF-8."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import yaml

from lowmed.errors import LowmedError

if TYPE_CHECKING:
    import pandas as pd


def read_text_file(path: str | os.PathLike, what: str, how_to_save: str = "") -> str:
    """A user's text file (``what`` names it in errors): UTF-8 (a BOM allowed) or UTF-16 with its BOM."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise LowmedError(f"{what}: cannot read ({exc.strerror or exc})") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise LowmedError(f"{what}: begins as UTF-16 but does not decode as it; save it as UTF-8") from None
    if b"\x00" in data[:4096]:
        raise LowmedError(f"{what}: not a text file (it holds NUL bytes)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise LowmedError(
            f"{what}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}; Latin-1 or Windows-1252?); "
            f"save it as UTF-8{how_to_save}"
        ) from None


def read_csv_file(path: str | os.PathLike, what: str, **options) -> "pd.DataFrame":
    """A user's CSV (``what`` names it in errors), read by pandas with ``options`` in any encoding
    ``read_text_file`` takes; one line for a file that is not a table."""
    import io

    import pandas as pd

    text = read_text_file(path, what, " (from a spreadsheet: as CSV UTF-8)")
    try:
        return pd.read_csv(io.StringIO(text), **options)
    except pd.errors.EmptyDataError:
        raise LowmedError(f"{what}: empty; expected a CSV with a header row") from None
    except (pd.errors.ParserError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LowmedError(f"{what}: not a readable CSV ({reason})") from None


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def check_writable(path: str | os.PathLike, option: str) -> None:
    """Refuse, before any work, an output path beside which nothing can be written (no permission, a read-only
    disk, a file where a folder should be): outputs are staged beside their final place."""
    path = Path(path).expanduser().absolute()
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise LowmedError(f"{option} {path}: {folder} is a file; expected a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".lowmed-write-check-", dir=folder))
    except OSError as exc:
        raise LowmedError(
            f"{option} {path}: cannot write in {folder} ({exc.strerror or exc}); choose another folder"
        ) from None


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_yaml(path: str | os.PathLike, data: Any) -> None:
    write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Strict JSON: NaN and infinity (an undefined metric) are written as null."""
    write_text(path, json.dumps(_finite_or_none(data), indent=2, default=str, allow_nan=False) + "\n")


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(item) for item in value]
    return value


def write_csv(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """Yield an empty staging dir beside ``out``; when the block succeeds it replaces ``out`` whole,
    so a reader never sees a half-written output dir and a failure leaves none behind."""
    staging = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
        swap_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def swap_into_place(staging: Path, out: Path) -> None:
    """Move a finished staging dir into place, replacing ``out`` only once everything is written."""
    if out.exists():
        retired = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, retired)
        os.replace(staging, out)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, out)
