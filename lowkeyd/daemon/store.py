"""The daemon's one SQLite file: how it is opened, locked and brought up to date.

Everything lowkeyd keeps between runs (what it did with each file, what it
published, the publish hook's runs, what the status page shows of a photo)
lives in ``state.sqlite3`` in the state dir. Each part of the daemon holds a
:class:`Store` connection of its own to it, so a slow reader of one part never
waits on a Python lock of another; SQLite's own locking (WAL, a busy timeout)
orders their writes. The file's schema is :data:`MIGRATIONS`, numbered by
``PRAGMA user_version``: a writable open brings any earlier file, or a missing
one, to the last version in one transaction.

Before version 3 the hook log and the status page's journal were files of
their own beside it; the step to version 3 copies their rows in and, once that
is committed, removes them.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from lowkeyd.errors import LowkeydError
from lowkeyd.paths import private_folder, state_dir

STATE_NAME = "state.sqlite3"
# The files of their own the hook log and the status page's journal had before version 3.
_OLD_HOOKS, _OLD_JOURNAL = "hooks.sqlite3", "status-page.sqlite3"
# How long an open or a write waits for another connection's write to finish.
BUSY_SECONDS = 30.0


class StateError(LowkeydError):
    """The state database cannot be opened or is not lowkeyd's."""


def default_state_path() -> Path:
    return state_dir() / STATE_NAME


def _version_1(db: sqlite3.Connection, path: Path) -> None:
    """What the daemon records of each source file, its history, its outputs and its heartbeat.

    ``IF NOT EXISTS``: history and outputs were added to files already at version 1 without a new number.
    """
    for statement in (
        """CREATE TABLE IF NOT EXISTS files (
            source TEXT NOT NULL,
            rel_path TEXT NOT NULL,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            inode INTEGER NOT NULL,
            sha256 TEXT NOT NULL,
            status TEXT NOT NULL,
            outcome TEXT,
            faces INTEGER,
            faces_too_small INTEGER,
            seconds REAL,
            output TEXT,
            duplicate_of TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            next_attempt REAL,
            updated REAL NOT NULL,
            PRIMARY KEY (source, rel_path)
        )""",
        "CREATE INDEX IF NOT EXISTS files_by_hash ON files (sha256, status)",
        "CREATE INDEX IF NOT EXISTS files_by_status ON files (status, next_attempt)",
        """CREATE TABLE IF NOT EXISTS history (
            source TEXT NOT NULL,
            rel_path TEXT NOT NULL,
            event TEXT NOT NULL,
            detail TEXT,
            at REAL NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS history_by_file ON history (source, rel_path, at)",
        # What lowkeyd published, by content: a file carrying lowkeyd's XMP marker is taken as already
        # cloaked only when its hash is here (anyone can write the marker). Kept after its row is replaced:
        # an older output copied back into a watched folder is still lowkeyd's.
        "CREATE TABLE IF NOT EXISTS outputs (sha256 TEXT PRIMARY KEY, at REAL NOT NULL)",
        """CREATE TABLE IF NOT EXISTS daemon (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            pid INTEGER NOT NULL,
            started REAL NOT NULL,
            heartbeat REAL NOT NULL,
            waiting INTEGER NOT NULL DEFAULT 0,
            message TEXT
        )""",
    ):
        db.execute(statement)


def _version_2(db: sqlite3.Connection, path: Path) -> None:
    """The outbox ledger.

    Each file lowkeyd has in the outbox now, by path, with its size and content hash: a file there is
    replaced, moved or removed only while it is still this one (the user may have put their own in its
    place). ``wanted`` is the name it was meant to have when a file of the user's had that one.
    """
    db.execute(
        """CREATE TABLE IF NOT EXISTS published (
            path TEXT PRIMARY KEY,
            size INTEGER,
            sha256 TEXT,
            wanted TEXT,
            at REAL NOT NULL
        )"""
    )
    # Copies published before the ledger existed: known by path only (no size or hash) until they are checked.
    db.execute("INSERT OR IGNORE INTO published (path, at) SELECT output, updated FROM files WHERE output IS NOT NULL")


_HOOK_RUNS = ("output", "env", "status", "exit_code", "error", "queued", "finished")
_DETAILS = ("source", "rel_path", "recorded", "preset", "status", "message", "seconds", "dropped", "faces")


def _version_3(db: sqlite3.Connection, path: Path) -> None:
    """The publish hook's runs and the status page's per-photo details, until now files of their own."""
    db.execute(
        """CREATE TABLE IF NOT EXISTS hook_runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            output TEXT NOT NULL,
            env TEXT NOT NULL,
            status TEXT NOT NULL,
            exit_code INTEGER,
            error TEXT,
            queued REAL NOT NULL,
            finished REAL
        )"""
    )
    db.execute("CREATE INDEX IF NOT EXISTS hook_runs_by_status ON hook_runs (status, finished)")
    db.execute(
        """CREATE TABLE IF NOT EXISTS details (
            source TEXT NOT NULL,
            rel_path TEXT NOT NULL,
            recorded REAL NOT NULL,
            preset TEXT NOT NULL,
            status TEXT NOT NULL,
            message TEXT NOT NULL,
            seconds REAL NOT NULL,
            dropped TEXT NOT NULL,
            faces TEXT NOT NULL,
            PRIMARY KEY (source, rel_path)
        )"""
    )
    # New ids for the runs, in their old order: pending runs are run again oldest first.
    _copy_rows(db, path, _OLD_HOOKS, "hook_runs", _HOOK_RUNS, insert="INSERT", order="id")
    _copy_rows(db, path, _OLD_JOURNAL, "details", _DETAILS, insert="INSERT OR REPLACE", order="rowid")


def _copy_rows(
    db: sqlite3.Connection, path: Path, name: str, table: str, columns: tuple[str, ...], *, insert: str, order: str
) -> None:
    """Copy ``table`` from the earlier file ``name`` beside the store at ``path``, if there is one, into ``db``."""
    old = path.with_name(name)
    if name == path.name or not old.exists():
        return
    names = ", ".join(columns)
    try:
        # Read-only, so a failed move leaves it as it was (what its write-ahead log holds is read all the same).
        with closing(sqlite3.connect(f"{old.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_SECONDS)) as source:
            if not source.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone():
                return  # created and never used
            rows = source.execute(f"SELECT {names} FROM {table} ORDER BY {order}")
            db.executemany(f"{insert} INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))})", rows)
    except sqlite3.Error as exc:
        raise StateError(
            f"cannot move {old} into it: {exc} (move that file away to start without its rows)"
        ) from None


MIGRATIONS: tuple[Callable[[sqlite3.Connection, Path], None], ...] = (_version_1, _version_2, _version_3)
VERSION = len(MIGRATIONS)


def _remove_merged(path: Path) -> None:
    """Remove the files a store at version 3 or later has taken the rows of (left if a crash came first)."""
    for name in (_OLD_HOOKS, _OLD_JOURNAL):
        if name == path.name:
            continue  # a store given that name is no earlier file
        for suffix in ("", "-wal", "-shm"):
            path.with_name(name + suffix).unlink(missing_ok=True)


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    # IMMEDIATE: the write lock before the version is read, so two openers never both migrate; and a store
    # another process holds locked is found at once, as an error, not at the daemon's first write.
    db.execute("BEGIN IMMEDIATE")
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > VERSION:
            raise StateError(f"written by a newer lowkeyd (schema {version})")
        for step in MIGRATIONS[version:]:
            step(db, path)
        if version < VERSION:
            db.execute(f"PRAGMA user_version={VERSION}")
        db.commit()
    except BaseException:
        db.rollback()
        raise
    _remove_merged(path)


def open_store(path: Path, *, readonly: bool) -> sqlite3.Connection:
    """A connection the daemon's threads can share, to a store at the current version unless ``readonly``.

    A read-only one never creates the file and reads whatever version it finds (`lowkeyd status` may
    run before the daemon has upgraded it).
    """
    try:
        if readonly:
            db = sqlite3.connect(
                f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False, timeout=BUSY_SECONDS
            )
        else:
            private_folder(path.parent)
            # Its user's alone, whatever the umask: it names every photo. SQLite gives its -wal and -shm
            # files the database file's mode.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
            os.chmod(path, 0o600)
            db = sqlite3.connect(path, check_same_thread=False, timeout=BUSY_SECONDS)
    except (sqlite3.Error, OSError) as exc:
        raise StateError(f"cannot open the state database {path}: {exc}") from None
    try:
        if readonly:
            db.execute("PRAGMA user_version")  # a file that is not a database says so here, not at the first query
        else:
            # WAL lets `lowkeyd status` and the status page read while the daemon writes.
            db.execute("PRAGMA journal_mode=WAL")
            _migrate(db, path)
    except (sqlite3.Error, OSError, StateError) as exc:
        db.close()
        raise StateError(f"cannot open the state database {path}: {exc}") from None
    db.row_factory = sqlite3.Row
    return db


class Store:
    """One connection to the state database, safe to share between threads: one statement or transaction at a time."""

    def __init__(self, path: Path | None = None, *, readonly: bool = False) -> None:
        self.path = path or default_state_path()
        self._db = open_store(self.path, readonly=readonly)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def _write(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        with self._transaction() as db:
            return db.execute(sql, params)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection, for statements committed together (or not at all)."""
        with self._lock, self._db:
            yield self._db
