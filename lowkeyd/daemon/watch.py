"""Noticing new photos: filesystem watchers, full scans, and waiting until a file is complete.

Watchers (inotify, FSEvents, or polling for network and FUSE mounts, where
inotify sees nothing) report paths that were written, closed after writing,
or moved in. Nothing is taken on an event alone: a path waits in
:class:`Settling` until its size, mtime and inode have held still for
``settle_seconds`` and it decodes, because phones and sync clients write in
bursts with pauses. Scans (at start and every ``rescan_interval``) feed the
same queue, catching whatever a watcher missed.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from lowkeyd.daemon.candidate import inspect
from lowkeyd.daemon.config import SourceConfig
from lowkeyd.daemon.ignore import SourceFilter, is_ignored_folder
from lowkeyd.daemon.state import FileKey
from lowkeyd.paths import is_within
from lowkeyd.serving.reading import Refused, is_complete

log = logging.getLogger(__name__)

# A file that holds still but is not a complete photo is waiting for the rest of its bytes, until it has
# held still this many settle periods: then it is taken anyway, so its failure is recorded and reported.
UNDECODABLE_PERIODS = 10

# A callback given the source's name and a path in it that may be a new or changed photo.
OnPath = Callable[[str, Path], None]


def _is_within_any(path: Path, folders: Iterable[Path]) -> bool:
    return any(is_within(path, f) for f in folders)


def scan(source: SourceConfig, skip: Iterable[Path] = ()) -> Iterator[Path]:
    """Every photo in ``source`` the daemon should consider, skipping ignored folders and ``skip``."""
    wanted = SourceFilter(source)
    skip = tuple(skip)
    for folder, subfolders, files in os.walk(source.path):
        here = Path(folder)
        if source.recursive:
            subfolders[:] = [
                s for s in subfolders if not is_ignored_folder(s) and not _is_within_any(here / s, skip)
            ]
        else:
            subfolders.clear()
        for name in files:
            path = here / name
            if wanted.wants(path.relative_to(source.path)):
                yield path


def inotify_limit_message(path: Path, exc: OSError) -> str | None:
    """What to tell the user when the kernel refuses more inotify watches or instances, else None."""
    sysctl = {errno.ENOSPC: "fs.inotify.max_user_watches", errno.EMFILE: "fs.inotify.max_user_instances"}.get(
        exc.errno or 0
    )
    if sysctl is None:
        return None
    return (
        f"cannot watch {path}: the kernel's inotify limit is reached ({exc.strerror}). Raise {sysctl}, e.g. "
        f"`echo {sysctl}=524288 | sudo tee /etc/sysctl.d/90-lowkeyd.conf && sudo sysctl --system`; "
        "until then this folder is polled, which is slower and costs more CPU"
    )


class _SourceEvents(FileSystemEventHandler):
    def __init__(self, source: SourceConfig, on_path: OnPath, skip: tuple[Path, ...], on_gone: OnPath | None) -> None:
        self._source = source
        self._filter = SourceFilter(source)
        self._on_path = on_path
        self._on_gone = on_gone
        self._skip = skip

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, (FileMovedEvent, FileDeletedEvent, DirMovedEvent, DirDeletedEvent)):
            # The old name is gone (a rename to an ignored name, e.g. a phone's trash, counts as a deletion).
            self._gone(Path(os.fsdecode(event.src_path)), folder=event.is_directory)
        if isinstance(event, FileMovedEvent):
            target = event.dest_path
        elif isinstance(event, (FileCreatedEvent, FileModifiedEvent, FileClosedEvent)):
            target = event.src_path
        else:
            return
        path = Path(os.fsdecode(target))
        relative = self._relative(path)
        if relative is not None and self._filter.wants(relative):
            self._on_path(self._source.name, path)

    def _relative(self, path: Path) -> Path | None:
        """``path`` relative to the source; None when it is outside it (moved out) or skipped."""
        try:
            relative = path.relative_to(self._source.path)
        except ValueError:
            return None
        return None if _is_within_any(path, self._skip) else relative

    def _gone(self, path: Path, *, folder: bool) -> None:
        relative = self._relative(path)
        if self._on_gone is not None and relative is not None and relative.parts and (folder or self._filter.wants(relative)):
            self._on_gone(self._source.name, path)


# What is worth hearing about: a close after writing is the best signal, the others come from
# polling, FSEvents and moves (watchdog reports a file moved in from outside as created); deletions
# and moves away, for the outbox to follow its originals.
_EVENTS = [FileCreatedEvent, FileModifiedEvent, FileClosedEvent, FileMovedEvent, FileDeletedEvent, DirMovedEvent, DirDeletedEvent]


class FolderWatcher:
    """Watches every source, one observer each, so one folder's trouble does not stop the others."""

    def __init__(
        self, sources: Iterable[SourceConfig], on_path: OnPath, skip: Iterable[Path] = (), on_gone: OnPath | None = None
    ) -> None:
        self._sources = list(sources)
        self._on_path = on_path
        self._on_gone = on_gone
        self._skip = tuple(skip)
        self._observers: list[BaseObserver] = []

    def start(self) -> None:
        for source in self._sources:
            handler = _SourceEvents(source, self._on_path, self._skip, self._on_gone)
            try:
                self._observers.append(self._observe(source, handler, polling=source.polling))
            except OSError as exc:
                message = inotify_limit_message(source.path, exc)
                if message is None:
                    raise
                log.error("%s", message)
                self._observers.append(self._observe(source, handler, polling=True))

    @staticmethod
    def _observe(source: SourceConfig, handler: _SourceEvents, *, polling: bool) -> BaseObserver:
        observer = PollingObserver(timeout=source.poll_interval) if polling else Observer()
        observer.schedule(handler, str(source.path), recursive=source.recursive, event_filter=_EVENTS)
        observer.daemon = True
        observer.start()
        log.info("watching %s%s", source.path, f" (polling every {source.poll_interval:g} s)" if polling else "")
        return observer

    def stop(self) -> None:
        for observer in self._observers:
            observer.stop()
        for observer in self._observers:
            observer.join(timeout=5)
        self._observers.clear()


@dataclass
class _Waiting:
    source: str
    key: FileKey | None  # None until first looked at
    still_since: float  # when the key was last seen to change
    next_look: float


class Settling:
    """Paths waiting to hold still; safe to feed from watcher threads.

    ``roots`` maps each source's name to its folder: what lies outside (through a link) is not looked into.
    """

    def __init__(self, settle_seconds: float, roots: Mapping[str, Path]) -> None:
        self._settle = settle_seconds
        self._roots = dict(roots)
        self._lock = threading.Lock()
        self._waiting: dict[Path, _Waiting] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._waiting)

    def add(self, source: str, path: Path) -> None:
        """``path`` (in ``source``) may have changed: look at it again soon."""
        now = time.monotonic()
        with self._lock:
            waiting = self._waiting.get(path)
            if waiting is None:
                self._waiting[path] = _Waiting(source, None, now, now)
            else:
                waiting.next_look = min(waiting.next_look, now)

    def take(self, now: float | None = None, limit: int | None = None) -> list[tuple[str, Path]]:
        """At most ``limit`` paths that have held still for the settle time and are complete (or never will be).

        They leave the waiting list; the others stay. A path that is not a regular file in its source
        (a FIFO, a device, a link out of the source) is handed out at once, for the caller to refuse:
        it is never opened here.
        """
        now = time.monotonic() if now is None else now
        ready: list[tuple[str, Path]] = []
        # Held throughout (reading included), so a watcher's add() cannot interleave with a decision.
        with self._lock:
            for path, waiting in list(self._waiting.items()):
                if limit is not None and len(ready) >= limit:
                    break
                if waiting.next_look > now:
                    continue
                try:
                    real, key = inspect(path, self._roots[waiting.source])
                except FileNotFoundError:  # renamed or deleted while settling: a new name has its own event
                    del self._waiting[path]
                    continue
                except (Refused, OSError):
                    del self._waiting[path]
                    ready.append((waiting.source, path))
                    continue
                if key != waiting.key:
                    waiting.key, waiting.still_since, waiting.next_look = key, now, now + self._settle
                elif now - waiting.still_since < self._settle:
                    waiting.next_look = waiting.still_since + self._settle
                elif is_complete(real) or now - waiting.still_since >= UNDECODABLE_PERIODS * max(self._settle, 1.0):
                    del self._waiting[path]
                    ready.append((waiting.source, path))
                else:
                    waiting.next_look = now + max(self._settle, 1.0)
        return ready
