"""One process at a time in a run dir: an exclusive lock file naming its owner.

``train``, ``finetune``, ``--resume`` and ``evaluate`` own the run dir they write. The lock file holds the owner's
pid, host, command and start time; a lock whose process is gone (killed, the machine restarted) is stale and is
taken over with a warning. A process may take a lock it already holds (an experiment trains, then evaluates).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from lowmed.errors import LowmedError
from lowmed.io import check_writable

log = logging.getLogger(__name__)

LOCK_FILE = ".lowmed.lock"
_held: dict[Path, int] = {}  # the run dirs this process owns, and how many times it took each


def owner(run_dir: str | os.PathLike) -> dict | None:
    """The lock's record (pid, host, command, since), or None where the run dir has no lock (or an unreadable one)."""
    try:
        return _parsed((Path(run_dir) / LOCK_FILE).read_bytes())
    except OSError:
        return None


def _parsed(content: bytes) -> dict | None:
    try:
        record = json.loads(content)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def owner_alive(record: dict) -> bool:
    """Whether the lock's process still runs; one on another host cannot be checked and counts as running, and a
    lock that names no process (a write cut short) is stale."""
    pid, host = record.get("pid"), record.get("host")
    if not isinstance(pid, int) or pid <= 0 or not host:
        return False
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def in_use_by_another(run_dir: str | os.PathLike) -> bool:
    """Whether a live process other than this one owns ``run_dir`` now."""
    record = owner(run_dir)
    if record is None or not owner_alive(record):
        return False
    return record.get("pid") != os.getpid() or record.get("host") != socket.gethostname()


@contextlib.contextmanager
def own_run_dir(run_dir: str | os.PathLike, command: str, enabled: bool = True) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block. A folder it creates is removed again when the block refuses bad input
    (``LowmedError``) or fails before anything but the lock was written. ``enabled`` False (a torchrun rank other
    than 0) does nothing.
    """
    path = Path(run_dir).expanduser().absolute()
    if not enabled:
        yield
        return
    if path in _held:
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    created = not path.exists()
    if path.exists() and not path.is_dir():
        raise LowmedError(f"run dir {path} is a file; expected a folder")
    if created:
        check_writable(path, "--out")
        path.mkdir(parents=True)
    _acquire(path, command)
    _held[path] = 1
    try:
        yield
    except LowmedError:  # bad input: a folder made for it goes again
        _release(path, remove=created)
        raise
    except BaseException:  # a failed run keeps what it wrote
        _release(path, remove=created and not any(p.name != LOCK_FILE for p in path.iterdir()))
        raise
    _release(path, remove=False)


def _release(path: Path, remove: bool) -> None:
    del _held[path]
    (path / LOCK_FILE).unlink(missing_ok=True)
    if remove:
        shutil.rmtree(path, ignore_errors=True)


def _acquire(path: Path, command: str) -> None:
    lock = path / LOCK_FILE
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    for _ in range(_TRIES):  # again after a stale lock was taken over, or while another process takes one over
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            seen = _read_bytes(lock)
            if seen is None:  # released meanwhile
                continue
            held = _parsed(seen)
            if held is None and _age_s(lock) < _WRITING_S:  # just made by another process, its record not yet in
                time.sleep(_TAKEOVER_WAIT_S)
                continue
            held = held or {}
            if owner_alive(held):
                raise LowmedError(
                    f"run dir {path} is in use by process {held.get('pid')} on {held.get('host')} "
                    f"({held.get('command')}, since {held.get('since')}); wait for it to finish, or delete {lock} "
                    "if that process is gone"
                ) from None
            if _remove_stale(lock, seen):
                log.warning(
                    f"run dir {path}: took over the lock of process {held.get('pid')} ({held.get('command')}, "
                    f"since {held.get('since')}), which is no longer running"
                )
            continue
        except OSError as exc:
            raise LowmedError(
                f"run dir {path}: cannot write there ({exc.strerror or exc}); choose another --out"
            ) from None
        with os.fdopen(fd, "w") as handle:
            json.dump(record, handle)
        return
    raise LowmedError(f"run dir {path}: other processes kept taking its lock; try again")


_TRIES = 50
_TAKEOVER_WAIT_S = 0.1  # between tries while another process writes a new lock or takes a stale one over
_WRITING_S = 2  # an unreadable lock younger than this is being written; older, it is a write cut short
_TAKEOVER_STALE_S = 30  # a takeover mark this old was left by a process killed in the middle of one


def _remove_stale(lock: Path, seen: bytes) -> bool:
    """Remove the stale lock whose content was ``seen``, unless another process replaced it since. Two processes
    finding the same stale lock would otherwise both remove it — the second removing the first's new lock — and
    both go on; so the check is repeated under a takeover mark that only one process at a time can make."""
    mark = lock.with_name(lock.name + ".takeover")
    try:
        mark.mkdir()
    except FileExistsError:  # another process is taking it over: the next try sees its lock
        if _age_s(mark) > _TAKEOVER_STALE_S:
            with contextlib.suppress(OSError):  # another process may remove it first
                mark.rmdir()
        time.sleep(_TAKEOVER_WAIT_S)
        return False
    try:
        if _read_bytes(lock) != seen:
            return False
        lock.unlink(missing_ok=True)
        return True
    finally:
        mark.rmdir()


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
