"""Desktop notifications, grouped per burst of photos, errors apart and rate-limited.

One notification per photo would be noise when a phone syncs 200 photos at
once: the counts are gathered until the queue runs dry (or a burst has gone
on for a while) and shown as one ("Cloaked 12 photos, 15 faces"). Failures,
and photos held back for a stronger cloak (which wait for their user, not for
a fix), are gathered apart and shown at most every ``error_interval`` seconds.
Everything is logged too; where there is no notification service (headless,
no D-Bus session) the log is all there is, and the daemon carries on.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# A long burst still reports progress this often (seconds).
BURST_REPORT_INTERVAL = 300.0


def desktop_available() -> bool:
    """Linux desktops notify over the D-Bus session bus; without one (headless, a system service) there is none."""
    return not sys.platform.startswith("linux") or bool(os.environ.get("DBUS_SESSION_BUS_ADDRESS"))


@dataclass
class _Tally:
    photos: int = 0
    faces: int = 0
    without_faces: int = 0
    since: float = 0.0


@dataclass
class _Failures:
    count: int = 0
    first: str = ""
    last_shown: float = field(default=-float("inf"))

    def add(self, name: str, message: str) -> None:
        if not self.count:
            self.first = f"{name}: {message}"
        self.count += 1


class Notifier:
    def __init__(self, *, enabled: bool, error_interval: float) -> None:
        self._desktop = enabled and desktop_available()
        if enabled and not self._desktop:
            log.info("desktop notifications are off: no D-Bus session bus (DBUS_SESSION_BUS_ADDRESS is unset); the log has everything")
        self._error_interval = error_interval
        self._lock = threading.Lock()
        self._tally = _Tally()
        self._failures = _Failures()
        self._held = _Failures()

    def photo_done(self, status: str, faces_cloaked: int) -> None:
        with self._lock:
            if not (self._tally.photos or self._tally.without_faces):
                self._tally.since = time.monotonic()
            if status == "cloaked":
                self._tally.photos += 1
                self._tally.faces += faces_cloaked
            else:
                self._tally.without_faces += 1

    def photo_failed(self, name: str, message: str) -> None:
        with self._lock:
            self._failures.add(name, message)

    def photo_held(self, name: str, reason: str) -> None:
        """A photo kept back, unpublished, until its user asks for a stronger cloak."""
        with self._lock:
            self._held.add(name, reason)

    def flush(self, *, idle: bool, now: float | None = None) -> list[str]:
        """Show what is due: the burst once the queue is ``idle``, failures when the rate limit allows.

        Returns the messages shown (also logged).
        """
        now = time.monotonic() if now is None else now
        due: list[tuple[int, str, str]] = []  # (log level, title, message)
        with self._lock:
            tally, failures, held = self._tally, self._failures, self._held
            if (tally.photos or tally.without_faces) and (idle or now - tally.since >= BURST_REPORT_INTERVAL):
                due.append((logging.INFO, "lowkeyd", self._burst_message(tally)))
                self._tally = _Tally()
            if failures.count and now - failures.last_shown >= self._error_interval:
                message = f"Could not cloak {_photos(failures.count)}, not published ({failures.first})"
                due.append((logging.WARNING, "lowkeyd: photos not published", message))
                self._failures = _Failures(last_shown=now)
            if held.count and now - held.last_shown >= self._error_interval:
                message = (
                    f"Held back {_photos(held.count)}, not published ({held.first}); "
                    "the status page can cloak it stronger"
                )
                due.append((logging.WARNING, "lowkeyd: photos held back", message))
                self._held = _Failures(last_shown=now)
        for level, title, message in due:
            log.log(level, "%s", message)
            self._show(title, message)
        return [message for _, _, message in due]

    def alert(self, title: str, message: str) -> None:
        """Show ``message`` now, ungrouped (the caller shows it once per occurrence); the log has it already."""
        self._show(title, message)

    @staticmethod
    def _burst_message(tally: _Tally) -> str:
        parts = []
        if tally.photos:
            faces = "1 face" if tally.faces == 1 else f"{tally.faces} faces"
            parts.append(f"Cloaked {_photos(tally.photos)}, {faces}")
        if tally.without_faces:
            parts.append(f"{tally.without_faces} without faces")
        return "; ".join(parts)

    def _show(self, title: str, message: str) -> None:
        if not self._desktop:
            return
        try:
            from plyer import notification

            with warnings.catch_warnings():
                # plyer warns about each backend it cannot use before settling on one.
                warnings.simplefilter("ignore")
                notification.notify(title=title, message=message, app_name="lowkeyd", timeout=10)
        except Exception as exc:  # any backend failure: notifications are a nicety, the log has them
            log.warning("desktop notifications unavailable (%s: %s); logging only", type(exc).__name__, exc)
            self._desktop = False


def _photos(count: int) -> str:
    return "1 photo" if count == 1 else f"{count} photos"
