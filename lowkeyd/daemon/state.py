"""What the daemon has done with each source file, kept in SQLite so a restart picks up where it stopped.

A file is known by its source, its path in that source, and its size, mtime
and inode: if those are unchanged since it was finished, it is not touched
again. Its content hash recognises the same photo under another name (a
rename, a duplicate), whose finished output is reused instead of cloaking it
again. Failures are retried with doubling waits; after the last attempt the
file is marked failed, which is reported and never published. A photo held
back under ``below_target: hold`` is marked held until its user asks for it
to be cloaked stronger.
"""

from __future__ import annotations

import enum
import os
import sqlite3
import time
from collections.abc import Container, Mapping
from dataclasses import dataclass
from pathlib import Path

from lowkeyd.daemon.store import Store


class Status(str, enum.Enum):
    QUEUED = "queued"  # handed to the worker, not started
    PROCESSING = "processing"  # the worker is on it (left so by a crash: counted as a failed attempt)
    RETRY = "retry"  # failed, tried again at next_attempt
    DONE = "done"  # finished: see outcome
    FAILED = "failed"  # gave up after the last attempt; never published
    # Not published: a face short of the target (below_target: hold), or the stronger cloak asked for could not
    # protect it. outcome names the preset that held it.
    HELD = "held"
    STRONGER = "stronger"  # held, and its user asked for a stronger cloak: due at next_attempt
    GONE = "gone"  # the original was deleted or renamed away; output is the cloaked copy kept, if any

    def __str__(self) -> str:
        return self.value


FINISHED = (Status.DONE, Status.FAILED, Status.HELD)
# Nothing to do for the file as it is: finished, or waiting for its next retry.
SETTLED = (*FINISHED, Status.RETRY, Status.STRONGER)


@dataclass(frozen=True)
class FileKey:
    """What says a file is unchanged, short of reading it."""

    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> FileKey:
        st = path.stat()
        return cls(st.st_size, st.st_mtime_ns, st.st_ino)


@dataclass(frozen=True)
class FileRecord:
    source: str
    rel_path: str
    key: FileKey
    sha256: str
    status: Status
    outcome: str | None
    faces: int | None
    faces_too_small: int | None
    seconds: float | None
    output: str | None
    duplicate_of: str | None
    attempts: int
    error: str | None
    next_attempt: float | None
    updated: float

    @classmethod
    def _from_row(cls, row: sqlite3.Row) -> FileRecord:
        values = dict(row)
        key = FileKey(values.pop("size"), values.pop("mtime_ns"), values.pop("inode"))
        return cls(key=key, **{**values, "status": Status(values["status"])})


@dataclass(frozen=True)
class PublishedCopy:
    """What lowkeyd wrote at a path in the outbox."""

    size: int | None  # None (with sha256) for a copy published before lowkeyd kept these
    sha256: str | None  # None: any content lowkeyd ever published (the outputs table) counts as it


@dataclass(frozen=True)
class DaemonInfo:
    pid: int
    started: float
    heartbeat: float
    waiting: int
    message: str | None


class StateDB(Store):
    """What the daemon records of each source file and of what it published; safe to share between threads."""

    def __init__(self, path: Path | None = None, *, readonly: bool = False) -> None:
        super().__init__(path, readonly=readonly)
        if not readonly:
            # Written at every step of every photo: in WAL a crash of lowkeyd still loses nothing, and a
            # power cut at most the last steps, which are done again.
            self._write("PRAGMA synchronous=NORMAL")

    # ---- reading

    def get(self, source: str, rel_path: str) -> FileRecord | None:
        rows = self._query("SELECT * FROM files WHERE source = ? AND rel_path = ?", (source, rel_path))
        return FileRecord._from_row(rows[0]) if rows else None

    def is_settled(self, source: str, rel_path: str, key: FileKey) -> bool:
        """Nothing to do for this file as it is now: finished, or waiting for its next retry."""
        record = self.get(source, rel_path)
        return record is not None and record.key == key and record.status in SETTLED

    def finished_with_hash(self, sha256: str) -> FileRecord | None:
        """The most recent successfully finished file with this content (its original may be gone), if any."""
        rows = self._query(
            """SELECT * FROM files WHERE sha256 = ? AND (status = ? OR (status = ? AND output IS NOT NULL))
               ORDER BY status = ? DESC, updated DESC LIMIT 1""",
            (sha256, Status.DONE.value, Status.GONE.value, Status.DONE.value),
        )
        return FileRecord._from_row(rows[0]) if rows else None

    def is_own_output(self, sha256: str) -> bool:
        """Whether lowkeyd published a file with exactly this content."""
        return bool(self._query("SELECT 1 FROM outputs WHERE sha256 = ?", (sha256,)))

    def done_under(self, source: str, rel_path: str = "") -> list[FileRecord]:
        """Finished rows of ``source`` at ``rel_path`` or in the folder it names (all of them for "")."""
        rows = self._query(
            """SELECT * FROM files WHERE source = ? AND status = ?
               AND (? = '' OR rel_path = ? OR substr(rel_path, 1, length(?) + 1) = ? || '/')""",
            (source, Status.DONE.value, rel_path, rel_path, rel_path, rel_path),
        )
        return [FileRecord._from_row(r) for r in rows]

    def history(self, source: str, rel_path: str) -> list[tuple[str, str | None]]:
        """(event, detail) of everything that happened to one file, oldest first."""
        rows = self._query(
            "SELECT event, detail FROM history WHERE source = ? AND rel_path = ? ORDER BY at, rowid",
            (source, rel_path),
        )
        return [(r[0], r[1]) for r in rows]

    def event_counts(self) -> dict[str, int]:
        """How often each event happened (published, removed, renamed...)."""
        return {event: n for event, n in self._query("SELECT event, COUNT(*) FROM history GROUP BY event")}

    def due_retries(self, now: float | None = None) -> list[FileRecord]:
        """Files due for a retry, or for the stronger cloak their user asked for (their status says which)."""
        rows = self._query(
            "SELECT * FROM files WHERE status IN (?, ?) AND next_attempt <= ? ORDER BY next_attempt",
            (Status.RETRY.value, Status.STRONGER.value, time.time() if now is None else now),
        )
        return [FileRecord._from_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Files per status, and finished files per outcome (as ``done:<outcome>``)."""
        out: dict[str, int] = {}
        for status, outcome, n in self._query("SELECT status, outcome, COUNT(*) FROM files GROUP BY status, outcome"):
            out[status] = out.get(status, 0) + n
            if status == Status.DONE.value and outcome:
                out[f"done:{outcome}"] = n
        return out

    def faces_cloaked(self) -> int:
        """Faces the engine cloaked: a result reused (a duplicate, a renamed original's) has 0 seconds of work."""
        rows = self._query(
            """SELECT COALESCE(SUM(faces), 0) FROM files
               WHERE status IN (?, ?) AND duplicate_of IS NULL AND seconds > 0""",
            (Status.DONE.value, Status.GONE.value),
        )
        return int(rows[0][0])

    def recent_errors(self, limit: int = 10) -> list[FileRecord]:
        rows = self._query(
            "SELECT * FROM files WHERE error IS NOT NULL AND status IN (?, ?, ?) ORDER BY updated DESC LIMIT ?",
            (Status.FAILED.value, Status.HELD.value, Status.RETRY.value, limit),
        )
        return [FileRecord._from_row(r) for r in rows]

    def published_at(self, path: Path) -> PublishedCopy | None:
        """What lowkeyd published at ``path`` in the outbox, if it has a copy there."""
        rows = self._query("SELECT size, sha256 FROM published WHERE path = ?", (str(path),))
        return PublishedCopy(rows[0][0], rows[0][1]) if rows else None

    def published_aside(self) -> int:
        """Copies in the outbox under a name of their own because a file lowkeyd did not write had theirs."""
        try:
            return int(self._query("SELECT COUNT(*) FROM published WHERE wanted IS NOT NULL")[0][0])
        except sqlite3.OperationalError:  # read-only, from a database the daemon has not upgraded yet
            return 0

    def daemon_info(self) -> DaemonInfo | None:
        rows = self._query("SELECT pid, started, heartbeat, waiting, message FROM daemon WHERE id = 1")
        return DaemonInfo(*rows[0]) if rows else None

    # ---- writing

    def mark_queued(self, source: str, rel_path: str, key: FileKey, sha256: str) -> None:
        """A file about to be handed to the worker; a changed file starts its attempts afresh."""
        previous = self.get(source, rel_path)
        attempts = previous.attempts if previous and previous.key == key and previous.sha256 == sha256 else 0
        self._write(
            """INSERT OR REPLACE INTO files (source, rel_path, size, mtime_ns, inode, sha256, status, attempts, updated)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (source, rel_path, key.size, key.mtime_ns, key.inode, sha256, Status.QUEUED.value, attempts, time.time()),
        )

    def mark_processing(self, source: str, rel_path: str) -> None:
        self._set_status(source, rel_path, Status.PROCESSING)

    def release(self, source: str, rel_path: str, *, stronger: bool = False) -> None:
        """A job dropped unstarted or abandoned by a clean shutdown: back to queued, no attempt counted;
        ``stronger``, a stronger cloak its user asked for, stays asked for (due at once)."""
        if stronger:
            self._write(
                "UPDATE files SET status = ?, next_attempt = ?, updated = ? WHERE source = ? AND rel_path = ?",
                (Status.STRONGER.value, time.time(), time.time(), source, rel_path),
            )
        else:
            self._set_status(source, rel_path, Status.QUEUED)

    def _set_status(self, source: str, rel_path: str, status: Status) -> None:
        self._write(
            "UPDATE files SET status = ?, updated = ? WHERE source = ? AND rel_path = ?",
            (status.value, time.time(), source, rel_path),
        )

    def mark_done(
        self,
        source: str,
        rel_path: str,
        *,
        outcome: str,
        faces: int,
        faces_too_small: int,
        seconds: float,
        output: Path | None,
        key: FileKey | None = None,
        sha256: str | None = None,
        duplicate_of: str | None = None,
        output_sha256: str | None = None,
    ) -> None:
        """Finished. ``key``/``sha256`` create the row when it was never queued (a recognised duplicate);
        ``output_sha256``, the content hash of the published ``output``, makes it known as lowkeyd's."""
        with self._transaction() as db:
            if output is not None and output_sha256 is not None:
                db.execute("INSERT OR REPLACE INTO outputs (sha256, at) VALUES (?, ?)", (output_sha256, time.time()))
            if key is not None and sha256 is not None:
                db.execute(
                    """INSERT OR REPLACE INTO files (source, rel_path, size, mtime_ns, inode, sha256, status, updated)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
                    (source, rel_path, key.size, key.mtime_ns, key.inode, sha256, Status.DONE.value, time.time()),
                )
            db.execute(
                """UPDATE files SET status = ?, outcome = ?, faces = ?, faces_too_small = ?, seconds = ?,
                   output = ?, duplicate_of = ?, error = NULL, next_attempt = NULL, updated = ?
                   WHERE source = ? AND rel_path = ?""",
                (
                    Status.DONE.value,
                    outcome,
                    faces,
                    faces_too_small,
                    seconds,
                    None if output is None else str(output),
                    duplicate_of,
                    time.time(),
                    source,
                    rel_path,
                ),
            )
            db.execute(
                "INSERT INTO history (source, rel_path, event, detail, at) VALUES (?, ?, ?, ?, ?)",
                (source, rel_path, "published" if output else outcome, None if output is None else str(output), time.time()),
            )

    def mark_failure(
        self, source: str, rel_path: str, error: str, *, max_attempts: int, backoff_seconds: float
    ) -> FileRecord:
        """One more failed attempt: scheduled for a retry, or failed for good after the last one."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT attempts FROM files WHERE source = ? AND rel_path = ?", (source, rel_path)
            ).fetchone()
            attempts = (row[0] if row else 0) + 1
            now = time.time()
            if attempts >= max_attempts:
                status, next_attempt = Status.FAILED, None
            else:
                status, next_attempt = Status.RETRY, now + backoff_seconds * 2 ** (attempts - 1)
            db.execute(
                """UPDATE files SET status = ?, attempts = ?, error = ?, next_attempt = ?, outcome = NULL,
                   output = NULL, updated = ? WHERE source = ? AND rel_path = ?""",
                (status.value, attempts, error, next_attempt, now, source, rel_path),
            )
        record = self.get(source, rel_path)
        assert record is not None
        return record

    def mark_refused(self, source: str, rel_path: str, key: FileKey, reason: str) -> None:
        """A file lowkeyd will not read (a link out of its folder, a FIFO): failed at once, never published."""
        self._write(
            """INSERT OR REPLACE INTO files (source, rel_path, size, mtime_ns, inode, sha256, status, error, updated)
               VALUES (?, ?, ?, ?, ?, '', ?, ?, ?)""",
            (source, rel_path, key.size, key.mtime_ns, key.inode, Status.FAILED.value, reason, time.time()),
        )

    def mark_held(self, source: str, rel_path: str, reason: str, *, preset: str) -> None:
        """Not published, by ``preset``: a face short of its target under ``below_target: hold``, or the
        stronger cloak asked for could not protect it. Kept back until its user asks for a stronger cloak."""
        now = time.time()
        with self._transaction() as db:
            db.execute(
                """UPDATE files SET status = ?, outcome = ?, error = ?, next_attempt = NULL, output = NULL, updated = ?
                   WHERE source = ? AND rel_path = ?""",
                (Status.HELD.value, preset, reason, now, source, rel_path),
            )
            db.execute(
                "INSERT INTO history (source, rel_path, event, detail, at) VALUES (?, ?, ?, ?, ?)",
                (source, rel_path, "held", reason, now),
            )

    def cloak_stronger(self, source: str, rel_path: str, preset: str) -> bool:
        """A held photo its user asked to cloak with ``preset`` (a wider budget): due at once. False when it is
        not held, or was held by ``preset`` itself (it would only do the same again)."""
        now = time.time()
        return bool(
            self._write(
                "UPDATE files SET status = ?, next_attempt = ?, updated = ? "
                "WHERE source = ? AND rel_path = ? AND status = ? AND outcome IS NOT ?",
                (Status.STRONGER.value, now, now, source, rel_path, Status.HELD.value, preset),
            ).rowcount
        )

    def retry_now(self, source: str, rel_path: str) -> bool:
        """A failed file asked for again by its user: due at once, with a fresh set of attempts."""
        return bool(
            self._write(
                "UPDATE files SET status = ?, attempts = 0, next_attempt = ?, updated = ? "
                "WHERE source = ? AND rel_path = ? AND status = ?",
                (Status.RETRY.value, time.time(), time.time(), source, rel_path, Status.FAILED.value),
            ).rowcount
        )

    def interrupted(self) -> list[FileRecord]:
        """Files left in processing: the daemon died under them."""
        rows = self._query("SELECT * FROM files WHERE status = ?", (Status.PROCESSING.value,))
        return [FileRecord._from_row(r) for r in rows]

    def unfinished(self) -> list[FileRecord]:
        """Files queued, being cloaked or waiting for a retry or a stronger cloak."""
        rows = self._query(
            "SELECT * FROM files WHERE status IN (?, ?, ?, ?)",
            (Status.QUEUED.value, Status.PROCESSING.value, Status.RETRY.value, Status.STRONGER.value),
        )
        return [FileRecord._from_row(r) for r in rows]

    def forget_vanished(self, roots: Mapping[str, Path], busy: Container[tuple[str, str]] = ()) -> list[FileRecord]:
        """Forget the unfinished files of ``roots`` (source name -> folder) that are no longer there; those forgotten.

        ``busy`` (source, path) pairs are left: a job holds them, and records what becomes of them.
        """
        gone = [
            r for r in self.unfinished()
            if r.source in roots and (r.source, r.rel_path) not in busy and not os.path.lexists(roots[r.source] / r.rel_path)
        ]
        for record in gone:
            self.forget(record.source, record.rel_path)
        return gone

    def forget(self, source: str, rel_path: str) -> None:
        """A file that disappeared before it was finished."""
        self._write(
            "DELETE FROM files WHERE source = ? AND rel_path = ? AND status NOT IN (?, ?, ?)",
            (source, rel_path, *(s.value for s in FINISHED)),
        )

    def record_published(self, path: Path, size: int, sha256: str, *, wanted: Path | None, moved_from: Path | None) -> None:
        """lowkeyd now has this file at ``path`` in the outbox (moved from ``moved_from``, which it no longer has)."""
        with self._transaction() as db:
            if moved_from is not None:
                db.execute("DELETE FROM published WHERE path = ?", (str(moved_from),))
            db.execute(
                "INSERT OR REPLACE INTO published (path, size, sha256, wanted, at) VALUES (?, ?, ?, ?, ?)",
                (str(path), size, sha256, None if wanted is None else str(wanted), time.time()),
            )

    def forget_published(self, path: Path) -> None:
        """lowkeyd removed its file at ``path``, or the file there is no longer the one it wrote."""
        self._write("DELETE FROM published WHERE path = ?", (str(path),))

    def heartbeat(self, *, waiting: int, message: str, started: float) -> None:
        self._write(
            "INSERT OR REPLACE INTO daemon (id, pid, started, heartbeat, waiting, message) VALUES (1, ?, ?, ?, ?, ?)",
            (os.getpid(), started, time.time(), waiting, message),
        )

    def clear_daemon(self) -> None:
        self._write("DELETE FROM daemon WHERE id = 1")

    def add_history(self, source: str, rel_path: str, event: str, detail: str | None = None) -> None:
        self._write(
            "INSERT INTO history (source, rel_path, event, detail, at) VALUES (?, ?, ?, ?, ?)",
            (source, rel_path, event, detail, time.time()),
        )

    def mark_gone(self, source: str, rel_path: str, *, output: Path | None, event: str, detail: str | None) -> None:
        """The original is gone; ``output`` is the cloaked copy still in the outbox (None once removed or moved)."""
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "UPDATE files SET status = ?, output = ?, updated = ? WHERE source = ? AND rel_path = ?",
                (Status.GONE.value, None if output is None else str(output), now, source, rel_path),
            )
            db.execute(
                "INSERT INTO history (source, rel_path, event, detail, at) VALUES (?, ?, ?, ?, ?)",
                (source, rel_path, event, detail, now),
            )
