"""The one state database: today's three SQLite files moved into it on first start, and a broken one in one line.

Today's files are built from the schema lowkeyd wrote them with before the store (copied below from the
state database, the hook log and the status page's journal of that version), with rows in each.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from daemon_fixtures import FAST_ATTACK, faceless_photo, wait_until

from lowkeyd.cli import main
from lowkeyd.daemon import store
from lowkeyd.serving.reading import content_hash
from lowkeyd.daemon.hooks import HookLog, hook_report
from lowkeyd.daemon.state import FileKey, PublishedCopy, StateDB, Status
from lowkeyd.daemon.status_page.journal import Journal
from lowkeyd.daemon.store import StateError

DATA = Path(__file__).parent / "data"
OLD_FILES = ("hooks.sqlite3", "status-page.sqlite3")

# state.sqlite3, at user_version 2
TODAY_STATE = """
CREATE TABLE IF NOT EXISTS files (
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
);
CREATE INDEX IF NOT EXISTS files_by_hash ON files (sha256, status);
CREATE INDEX IF NOT EXISTS files_by_status ON files (status, next_attempt);
CREATE TABLE IF NOT EXISTS history (
    source TEXT NOT NULL,
    rel_path TEXT NOT NULL,
    event TEXT NOT NULL,
    detail TEXT,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS history_by_file ON history (source, rel_path, at);
-- What lowkeyd published, by content: a file carrying lowkeyd's XMP marker is taken as already
-- cloaked only when its hash is here (anyone can write the marker). Kept after its row is replaced:
-- an older output copied back into a watched folder is still lowkeyd's.
CREATE TABLE IF NOT EXISTS outputs (
    sha256 TEXT PRIMARY KEY,
    at REAL NOT NULL
);
-- Each file lowkeyd has in the outbox now, by path, with its size and content hash: a file there
-- is replaced, moved or removed only while it is still this one (the user may have put their own
-- in its place). ``wanted`` is the name it was meant to have when a file of the user's had that one.
-- Rows from before version 2 have no size or hash: see StateDB.published_at.
CREATE TABLE IF NOT EXISTS published (
    path TEXT PRIMARY KEY,
    size INTEGER,
    sha256 TEXT,
    wanted TEXT,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS daemon (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    pid INTEGER NOT NULL,
    started REAL NOT NULL,
    heartbeat REAL NOT NULL,
    waiting INTEGER NOT NULL DEFAULT 0,
    message TEXT
);
"""
# hooks.sqlite3 (no user_version)
TODAY_HOOKS = """
CREATE TABLE IF NOT EXISTS hook_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    output TEXT NOT NULL,
    env TEXT NOT NULL,
    status TEXT NOT NULL,
    exit_code INTEGER,
    error TEXT,
    queued REAL NOT NULL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS hook_runs_by_status ON hook_runs (status, finished);
"""
# status-page.sqlite3 (no user_version)
TODAY_JOURNAL = """
CREATE TABLE IF NOT EXISTS details (
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
);
"""


FACES = [{"box": [10.0, 20.0, 110.0, 140.0], "size": 120.0, "status": "cloaked",
          "similarity": {"arcface": 0.12}, "thresholds": {"arcface": 0.28}, "lpips": 0.03}]


@dataclass(frozen=True)
class Today:
    """A state folder as today's lowkeyd leaves it, and the folders its rows name."""

    folder: Path
    src: Path
    outbox: Path
    photo: Path  # src/a.jpg: finished, published as out/cam/a.jpg
    published: Path
    pending: Path  # out/cam/old.jpg: a hook run for it was pending when the daemon was killed
    key: FileKey
    sha256: str


def hook_env(today: Today, output: Path) -> dict[str, str]:
    return {
        "LOWKEYD_EVENT": "published",
        "LOWKEYD_OUTPUT": str(output),
        "LOWKEYD_OUTPUT_REL": output.relative_to(today.outbox).as_posix(),
        "LOWKEYD_OUTBOX": str(today.outbox),
    }


def todays_files(base: Path) -> Today:
    folder, src, outbox = base / "state", base / "src", base / "out"
    folder.mkdir(mode=0o700)
    src.mkdir()
    (outbox / "cam").mkdir(parents=True)
    photo = src / "a.jpg"
    photo.write_bytes((DATA / "obama.jpg").read_bytes())
    published, pending = outbox / "cam" / "a.jpg", outbox / "cam" / "old.jpg"
    published.write_bytes(b"cloaked a")
    pending.write_bytes(b"cloaked old")
    today = Today(folder, src, outbox, photo, published, pending, FileKey.of(photo), content_hash(photo))
    k = today.key
    with closing(sqlite3.connect(folder / "state.sqlite3")) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(TODAY_STATE)
        db.executemany(
            "INSERT INTO files (source, rel_path, size, mtime_ns, inode, sha256, status, outcome, faces, faces_too_small,"
            " seconds, output, duplicate_of, attempts, error, next_attempt, updated) VALUES"
            " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                ("cam", "a.jpg", k.size, k.mtime_ns, k.inode, today.sha256, "done", "cloaked", 1, 0, 4.5,
                 str(published), None, 0, None, None, 1000.0),
                ("cam", "b.jpg", 10, 1, 2, "bb", "failed", None, None, None, None, None, None, 3, "not a photo", None, 1001.0),
            ],
        )
        db.execute("INSERT INTO history VALUES ('cam', 'a.jpg', 'published', ?, 1000.0)", (str(published),))
        db.execute("INSERT INTO outputs VALUES (?, 1000.0)", (content_hash(published),))
        db.execute(
            "INSERT INTO published VALUES (?, ?, ?, NULL, 1000.0)",
            (str(published), published.stat().st_size, content_hash(published)),
        )
        db.execute("INSERT INTO daemon VALUES (1, 4242, 900.0, 1000.0, 0, '1 done')")
        db.execute("PRAGMA user_version=2")
        db.commit()
    with closing(sqlite3.connect(folder / "status-page.sqlite3")) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(TODAY_JOURNAL)
        db.execute(
            "INSERT INTO details VALUES ('cam', 'a.jpg', 1000.0, 'default', 'cloaked', 'ok', 4.5, ?, ?)",
            (json.dumps(["exif:gps"]), json.dumps(FACES)),
        )
        db.commit()
    # The hook log as a daemon killed with -9 leaves it: its last runs only in the write-ahead log.
    live = base / "live"
    live.mkdir()
    with closing(sqlite3.connect(live / "hooks.sqlite3")) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(TODAY_HOOKS)
        runs = [
            (str(published), json.dumps(hook_env(today, published)), "ok", 0, None, 1000.0, 1001.0),
            (str(published), json.dumps(hook_env(today, published)), "failed", 3, "exit status 3: quota", 1002.0, 1003.0),
            (str(pending), json.dumps(hook_env(today, pending)), "pending", None, None, 1004.0, None),
        ]
        db.executemany(
            "INSERT INTO hook_runs (output, env, status, exit_code, error, queued, finished) VALUES (?, ?, ?, ?, ?, ?, ?)",
            runs,
        )
        db.commit()
        for name in ("hooks.sqlite3", "hooks.sqlite3-wal"):
            (folder / name).write_bytes((live / name).read_bytes())
    assert (folder / "hooks.sqlite3-wal").stat().st_size > 0
    for path in folder.iterdir():
        path.chmod(0o600)
    return today


@pytest.fixture
def today(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Today:
    for name in ("STATE", "CONFIG", "RUNTIME"):
        monkeypatch.setenv(f"LOWKEYD_{name}_DIR", str(tmp_path / name.lower()))
    return todays_files(tmp_path)


def user_version(path: Path) -> int:
    with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
        return db.execute("PRAGMA user_version").fetchone()[0]


def assert_todays_rows(today: Today, state: StateDB, hooks: HookLog, journal: Journal) -> None:
    a = state.get("cam", "a.jpg")
    assert a is not None and (a.key, a.sha256, a.status, a.outcome, a.faces, a.seconds, a.output, a.updated) == (
        today.key, today.sha256, Status.DONE, "cloaked", 1, 4.5, str(today.published), 1000.0
    )
    assert state.is_settled("cam", "a.jpg", FileKey.of(today.photo))
    b = state.get("cam", "b.jpg")
    assert b is not None and (b.status, b.attempts, b.error) == (Status.FAILED, 3, "not a photo")
    assert state.history("cam", "a.jpg") == [("published", str(today.published))]
    assert state.is_own_output(content_hash(today.published))
    assert state.published_at(today.published) == PublishedCopy(today.published.stat().st_size, content_hash(today.published))
    detail = journal.get("cam", "a.jpg")
    assert detail is not None and (detail.preset, detail.dropped, detail.faces[0].box) == ("default", ("exif:gps",), (10.0, 20.0, 110.0, 140.0))
    assert detail.faces[0].protected_against == {"arcface": True}
    assert hooks.counts() == {"ok": 1, "failed": 1, "pending": 1}
    [(_, env)] = hooks.pending()
    assert env == hook_env(today, today.pending)
    [failure] = hooks.recent_failures()
    assert (failure.output, failure.error) == (str(today.published), "exit status 3: quota")


def test_todays_three_files_become_one_on_the_first_start(today: Today, capsys: pytest.CaptureFixture[str]) -> None:
    state, hooks, journal = StateDB(), HookLog(), Journal()
    assert state.path == hooks.path == journal.path == today.folder / "state.sqlite3"
    assert_todays_rows(today, state, hooks, journal)
    assert state.daemon_info() is not None and state.daemon_info().pid == 4242
    assert sorted(p.name for p in today.folder.iterdir() if p.name.startswith(OLD_FILES)) == [], "moved, then removed"
    assert user_version(state.path) == store.VERSION
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in today.folder.iterdir()} == {
        name: 0o600 for name in ("state.sqlite3", "state.sqlite3-wal", "state.sqlite3-shm")
    }
    assert stat.S_IMODE(today.folder.stat().st_mode) == 0o700

    assert main(["status"]) == 0
    shown = capsys.readouterr().out
    assert "photos done: 1 (1 cloaked)" in shown and "failed: 1" in shown
    assert "publish hook: 1 ok, 1 failed, 1 pending" in shown and "exit status 3: quota" in shown

    [(pending_id, _)] = hooks.pending()
    assert hooks.add(hook_env(today, today.published)) > pending_id, "new runs come after the moved ones"
    for db in (state, hooks, journal):
        db.close()
    # Opened again: nothing moved twice.
    state, hooks, journal = StateDB(), HookLog(), Journal()
    assert hooks.counts() == {"ok": 1, "failed": 1, "pending": 2}
    assert state.counts() == {"done": 1, "done:cloaked": 1, "failed": 1}
    for db in (state, hooks, journal):
        db.close()


def test_a_fresh_folder_gets_every_table_and_nothing_to_report(tmp_path: Path) -> None:
    path = tmp_path / "state" / "state.sqlite3"
    assert hook_report(path) is None
    StateDB(path).close()
    assert user_version(path) == store.VERSION
    with closing(sqlite3.connect(path)) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables >= {"files", "history", "outputs", "published", "daemon", "hook_runs", "details"}
    assert hook_report(path) is None, "the hook never ran"


def test_an_old_file_that_cannot_be_read_stops_the_start_and_is_left_as_it_was(today: Today) -> None:
    broken = today.folder / "status-page.sqlite3"
    broken.write_bytes(b"not a database, whatever its name says\n" * 100)
    before = {p.name: p.read_bytes() for p in today.folder.iterdir()}
    with pytest.raises(StateError) as raised:
        StateDB()
    message = str(raised.value)
    assert f"cannot move {broken} into it: file is not a database" in message and "\n" not in message
    assert {p.name: p.read_bytes() for p in today.folder.iterdir() if p.name in before} == before
    assert user_version(today.folder / "state.sqlite3") == 2, "the step is undone: nothing half moved"


def test_a_locked_or_corrupt_state_database_is_one_line_not_a_traceback(
    today: Today, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = today.folder / "state.sqlite3"
    StateDB().close()
    monkeypatch.setattr(store, "BUSY_SECONDS", 0.1)
    with closing(sqlite3.connect(path)) as holder:
        holder.execute("BEGIN EXCLUSIVE")  # another process in the middle of a write
        with pytest.raises(StateError, match=f"^cannot open the state database {path}: database is locked$"):
            StateDB()
        holder.rollback()

    for name in ("state.sqlite3-wal", "state.sqlite3-shm"):
        (today.folder / name).unlink(missing_ok=True)
    path.write_bytes(b"a disk error, or a file put here by hand\n" * 100)
    expected = f"lowkeyd: error: cannot open the state database {path}: file is not a database\n"
    assert main(["status"]) == 1
    assert capsys.readouterr().err == expected
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"sources": [{"path": str(today.src)}], "outbox": str(today.outbox)}))
    done = subprocess.run(
        [sys.executable, "-m", "lowkeyd", "run", "--config", str(config)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 1 and done.stderr.endswith(expected) and "Traceback" not in done.stderr, done.stderr


@pytest.mark.slow
def test_the_daemon_carries_on_from_todays_files(today: Today, tmp_path: Path) -> None:
    """A real daemon on today's files: the finished photo is left alone, the pending hook run is run, new photos flow."""
    events = tmp_path / "events"
    hook = tmp_path / "hook"
    hook.write_text(f'#!/bin/sh\necho "$LOWKEYD_EVENT $LOWKEYD_OUTPUT_REL" >> "{events}"\n')
    hook.chmod(0o755)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "sources": [{"path": str(today.src), "name": "cam"}],
        "outbox": str(today.outbox),
        "attack": FAST_ATTACK,
        "work": {"nice": 0, "idle_priority": False},
        "watch": {"settle_seconds": 1, "rescan_interval": 0},
        "on_published": {"command": [str(hook)]},
    }))
    (today.src / "new.jpg").write_bytes(faceless_photo(gps=False))
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "lowkeyd", "run", "--config", str(config)], stdout=out, stderr=out,
            env={**os.environ, "LOWKEYD_THREADS": "2"},
        )
    try:
        def handed_on() -> set[str]:
            return set(events.read_text().splitlines()) if events.exists() else set()

        # Models load first: generous, as the other daemon tests.
        wait_until(
            lambda: {"published cam/old.jpg", "published cam/new.jpg"} <= handed_on(), 600, "both hook runs",
            process, log.read_text,
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log.read_text()[-4000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    assert handed_on() == {"published cam/old.jpg", "published cam/new.jpg"}, "a.jpg was finished: not handed on again"
    assert (today.outbox / "cam" / "a.jpg").read_bytes() == b"cloaked a"
    state, hooks, journal = StateDB(readonly=True), HookLog(readonly=True), Journal()
    try:
        a = state.get("cam", "a.jpg")
        assert a is not None and (a.status, a.seconds, a.updated) == (Status.DONE, 4.5, 1000.0), "not cloaked again"
        new = state.get("cam", "new.jpg")
        assert new is not None and (new.status, new.outcome) == (Status.DONE, "no_face")
        assert hooks.counts() == {"ok": 3, "failed": 1, "pending": 0}
        assert journal.get("cam", "a.jpg") is not None and journal.get("cam", "new.jpg") is not None
    finally:
        for db in (state, hooks, journal):
            db.close()
