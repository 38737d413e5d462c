"""The outbox follows its originals: a deleted or renamed original, applied to its cloaked copy as configured.

Per source, ``on_original_deleted`` keeps the cloaked copy or removes it, and
``on_original_renamed`` moves it to the new name or publishes a copy there and
keeps the old one. Only what lowkeyd itself published is ever removed or
moved: the state database names each copy it wrote and what it held, and a
copy the user has replaced with a file of their own is left alone (said once,
in the log and the file's history, and counted in ``lowkeyd status``). Each
removal or move is one atomic step in the outbox (the sync client then carries
it on), is logged, kept in the file's history and handed to the publish hook
(``LOWKEYD_EVENT=removed`` or ``renamed``).

A rename often reaches lowkeyd as a deletion and a new file (sync clients
write the new name, then delete the old), so a deletion is acted on only
after a grace period and once nothing is waiting to settle: by then a new
file with the same content has been recognised as the renamed original.
Deletions and renames while the daemon was stopped are found the same way by
the start-up scan (:meth:`Follower.catch_up`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from lowkeyd.daemon.config import SourceConfig
from lowkeyd.daemon.state import FileKey, FileRecord, StateDB
from lowkeyd.serving.jobs import Published
from lowkeyd.serving.outbox import Outbox

log = logging.getLogger(__name__)


class Follower:
    """Safe to feed from the watcher and scan threads; :meth:`apply_due` and :meth:`renamed` run on the main thread."""

    def __init__(
        self,
        sources: Iterable[SourceConfig],
        state: StateDB,
        outbox: Outbox,
        hand_on: Callable[[Published], None],
        preset: str,
        *,
        grace: float,
    ) -> None:
        self._sources = {source.name: source for source in sources}
        self._state = state
        self._outbox = outbox
        self._hand_on = hand_on
        self._preset = preset
        self._grace = grace
        self._lock = threading.Lock()
        self._suspects: dict[tuple[str, str], float] = {}  # (source, path or folder) -> when to look

    def gone(self, source: str, path: Path) -> None:
        """``path`` (a file or a folder of ``source``) was deleted or moved away."""
        rel_path = path.relative_to(self._sources[source].path).as_posix()
        with self._lock:
            self._suspects[(source, rel_path)] = time.monotonic() + self._grace

    def catch_up(self, source: SourceConfig) -> None:
        """After a scan: every finished original of ``source`` no longer there is looked at like a deletion."""
        missing = [r.rel_path for r in self._state.done_under(source.name) if not self._exists(source.name, r.rel_path)]
        deadline = time.monotonic() + self._grace
        with self._lock:
            for rel_path in missing:
                self._suspects[(source.name, rel_path)] = deadline
        if missing:
            log.info("%s: %d original(s) gone since they were published", source.name, len(missing))

    def apply_due(self, *, settled: bool, now: float | None = None) -> None:
        """Act on deletions past their grace period, once ``settled`` (no new file may still be their new name)."""
        if not settled:
            return
        now = time.monotonic() if now is None else now
        with self._lock:
            due = [key for key, deadline in self._suspects.items() if deadline <= now]
            for key in due:
                del self._suspects[key]
        for source, rel_path in due:
            for record in self._state.done_under(source, rel_path):
                if not self._exists(source, record.rel_path):
                    self._deleted(record)

    def renamed(self, earlier: FileRecord, source: str, rel_path: str, key: FileKey, sha256: str, dest: Path) -> bool:
        """Finish a new file that is ``earlier`` under a new name; False when it is not (or a copy is wanted)."""
        if earlier.source != source or earlier.rel_path == rel_path or self._exists(source, earlier.rel_path):
            return False  # a duplicate, not a rename
        old = f"{source}/{earlier.rel_path}"
        output = None if earlier.output is None else Path(earlier.output)
        if self._sources[source].on_original_renamed == "copy" or output is None:
            self._state.mark_gone(source, earlier.rel_path, output=output, event="renamed", detail=f"{source}/{rel_path}")
            return False  # the caller publishes a copy under the new name (or cloaks it again)
        moved = self._outbox.move(output, dest.with_suffix(output.suffix))
        if moved is None:
            if self._left_alone(source, earlier.rel_path, output, "renamed"):
                self._state.add_history(source, earlier.rel_path, "left_alone", str(output))
            self._state.mark_gone(source, earlier.rel_path, output=None, event="renamed", detail=f"{source}/{rel_path}")
            return False  # no copy of lowkeyd's to move: the caller cloaks the photo again
        self._state.mark_gone(source, earlier.rel_path, output=None, event="renamed", detail=f"{source}/{rel_path}")
        self._state.mark_done(
            source, rel_path, outcome=earlier.outcome or "", faces=earlier.faces or 0,
            faces_too_small=earlier.faces_too_small or 0, seconds=0.0, output=moved, key=key, sha256=sha256,
            duplicate_of=earlier.duplicate_of,
        )
        self._state.add_history(source, rel_path, "renamed_from", old)
        log.info("%s/%s: renamed from %s; its cloaked copy moved along (on_original_renamed: move)", source, rel_path, old)
        self._hand_on(self._published(source, rel_path, earlier, moved, event="renamed", previous=output))
        return True

    def _deleted(self, record: FileRecord) -> None:
        source, rel_path = record.source, record.rel_path
        output = None if record.output is None else Path(record.output)
        if self._sources[source].on_original_deleted == "keep" or output is None:
            self._state.mark_gone(source, rel_path, output=output, event="original_deleted", detail="cloaked copy kept")
            log.info("%s/%s: original deleted; its cloaked copy is kept (on_original_deleted: keep)", source, rel_path)
            return
        if not self._outbox.remove(output):
            left = self._left_alone(source, rel_path, output, "deleted")
            self._state.mark_gone(source, rel_path, output=None, event="left_alone" if left else "removed", detail=str(output))
            return
        self._state.mark_gone(source, rel_path, output=None, event="removed", detail=str(output))
        log.info("%s/%s: original deleted; its cloaked copy %s removed", source, rel_path, output)
        self._hand_on(self._published(source, rel_path, record, output, event="removed"))

    def _left_alone(self, source: str, rel_path: str, output: Path, what: str) -> bool:
        """Whether a file not lowkeyd's is now at ``output``, where its copy was; logged (a deleted copy is not news)."""
        if not self._outbox.foreign(output):
            return False
        log.warning(
            "%s/%s: original %s; %s is no longer the copy lowkeyd published (a file of yours?): left alone",
            source, rel_path, what, output,
        )
        return True

    def _exists(self, source: str, rel_path: str) -> bool:
        return (self._sources[source].path / rel_path).exists() or (self._sources[source].path / rel_path).is_symlink()

    def _published(
        self, source: str, rel_path: str, record: FileRecord, output: Path, *, event: str, previous: Path | None = None
    ) -> Published:
        return Published(
            output, self._outbox.root, self._sources[source].path / rel_path, source, record.outcome or "",
            record.faces or 0, record.faces_too_small or 0, self._preset, 0.0, event=event, previous=previous,
        )
