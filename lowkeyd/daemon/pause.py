"""Publishing held back while the outbox is full, missing or failing, and when to try again.

A full disk says nothing about the photos: counting it as their failed
attempts would mark good photos failed for good. So a photo that could not be
published for such a reason is put back (no attempt counted), publishing stops
and is tried again once there is room for what was held back, once a missing
outbox is back, or, for an I/O error, after a wait that doubles each time.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from lowkeyd.serving.outbox import Cause

FIRST_WAIT = 30.0
LONGEST_WAIT = 900.0


@dataclass
class _Held:
    reason: str
    cause: Cause
    since: float
    free_then: int
    needed: int


class PublishPause:
    """Safe to share between the worker thread (which pauses) and the main thread (which resumes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: _Held | None = None
        self._wait = FIRST_WAIT

    @property
    def reason(self) -> str | None:
        with self._lock:
            return None if self._held is None else self._held.reason

    def hold(self, reason: str, *, cause: Cause, free: int, needed: int, now: float | None = None) -> bool:
        """Pause (or stay paused) for ``reason``; True when this starts a pause, to be announced once."""
        now = time.monotonic() if now is None else now
        with self._lock:
            held = self._held
            if held is None:
                self._held = _Held(reason, cause, now, free, needed)
                return True
            held.reason, held.cause = reason, cause
            held.free_then, held.needed = min(held.free_then, free), max(held.needed, needed)
            return False

    def may_resume(self, *, unavailable: bool, free: int, now: float | None = None) -> bool:
        """Whether to try publishing again: the outbox is there and has room, or an I/O error's wait is over."""
        now = time.monotonic() if now is None else now
        with self._lock:
            held = self._held
            if held is None:
                return True
            if unavailable:
                return False
            if held.cause == "space":
                return free >= held.free_then + held.needed
            return held.cause == "missing" or now - held.since >= self._wait

    def resume(self) -> None:
        with self._lock:
            if self._held is not None and self._held.cause == "error":
                self._wait = min(self._wait * 2, LONGEST_WAIT)  # the same error again waits longer
            self._held = None
