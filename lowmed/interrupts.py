"""Ctrl-C while lowmed trains: finish the batch, then stop resumably; and remember the request, so that what runs
many runs (a tuning cell, a study) stops before the next one."""

from __future__ import annotations

import signal
import threading
from typing import Any

from lowmed.console import log

# Ctrl-C asked for a stop: set by StopAfterBatch and kept when the run it landed in had already finished its last
# batch, so that what runs the runs (a tuning cell, a study) stops before the next one instead of going on
_STOP_ASKED = threading.Event()


def stop_asked() -> bool:
    """Whether Ctrl-C was pressed while a run was training, even after its last batch."""
    return _STOP_ASKED.is_set()


class StopAfterBatch:
    """Ctrl-C once: finish the current batch, then stop (the last finished epoch's last.pt stays the resume point).
    Ctrl-C twice: stop at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None  # the SIGINT handler to put back

    def __enter__(self) -> "StopAfterBatch":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        _STOP_ASKED.set()
        log.warning("stopping after this batch (Ctrl-C again to stop at once)")

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt
