"""The state database and the outbox: what survives a restart, and how a photo is published."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from lowkeyd.cli import main
from lowkeyd.cli.daemon import status_report
from lowkeyd.daemon.service import single_instance
from lowkeyd.daemon.state import FileKey, StateDB, Status
from lowkeyd.daemon.store import StateError
from lowkeyd.serving.outbox import STAGING_NAME, Outbox, OutboxUnavailable
from lowkeyd.serving.reading import content_hash

DATA = Path(__file__).parent / "data"


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "state"
    monkeypatch.setenv("LOWKEYD_STATE_DIR", str(folder))
    return folder


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "a.jpg"
    path.parent.mkdir()
    path.write_bytes((DATA / "obama.jpg").read_bytes())
    return path


def test_a_finished_file_stays_finished_across_a_restart(state_dir: Path, photo: Path) -> None:
    key, sha = FileKey.of(photo), content_hash(photo)
    db = StateDB()
    assert db.path == state_dir / "state.sqlite3"
    assert db.get("cam", "a.jpg") is None and not db.is_settled("cam", "a.jpg", key)
    db.mark_queued("cam", "a.jpg", key, sha)
    assert not db.is_settled("cam", "a.jpg", key)
    db.mark_done("cam", "a.jpg", outcome="cloaked", faces=1, faces_too_small=0, seconds=3.5, output=Path("/o/a.jpg"))
    db.close()

    again = StateDB()
    record = again.get("cam", "a.jpg")
    assert record is not None
    assert (record.status, record.outcome, record.faces, record.output) == (Status.DONE, "cloaked", 1, "/o/a.jpg")
    assert record.key == key and record.sha256 == sha
    assert again.is_settled("cam", "a.jpg", key)
    # A touched file is no longer the one that was finished
    os.utime(photo, ns=(key.mtime_ns + 10**9, key.mtime_ns + 10**9))
    assert not again.is_settled("cam", "a.jpg", FileKey.of(photo))
    # ...but its content is recognised
    found = again.finished_with_hash(content_hash(photo))
    assert found is not None and found.rel_path == "a.jpg"
    assert again.counts() == {"done": 1, "done:cloaked": 1}
    assert again.faces_cloaked() == 1


def test_a_published_outputs_hash_is_known_after_its_row_is_replaced(state_dir: Path, photo: Path) -> None:
    key, sha = FileKey.of(photo), content_hash(photo)
    db = StateDB()
    db.mark_queued("cam", "a.jpg", key, sha)
    db.mark_done("cam", "a.jpg", outcome="no_face", faces=0, faces_too_small=0, seconds=1.0, output=None, output_sha256="0" * 64)
    assert not db.is_own_output("0" * 64), "nothing was published, so no content is lowkeyd's"
    db.mark_done(
        "cam", "a.jpg", outcome="cloaked", faces=1, faces_too_small=0, seconds=1.0, output=Path("/o/a.jpg"), output_sha256="a" * 64
    )
    db.mark_queued("cam", "a.jpg", key, sha)  # cloaked again: the row is replaced, an older copy is still lowkeyd's
    db.close()
    again = StateDB()
    assert again.is_own_output("a" * 64) and not again.is_own_output(sha)


def test_failures_back_off_then_fail_for_good(state_dir: Path, photo: Path) -> None:
    db = StateDB()
    key, sha = FileKey.of(photo), content_hash(photo)
    db.mark_queued("cam", "a.jpg", key, sha)
    before = time.time()
    first = db.mark_failure("cam", "a.jpg", "cannot decode", max_attempts=3, backoff_seconds=100)
    assert first.status is Status.RETRY and first.attempts == 1
    assert before + 100 <= first.next_attempt <= time.time() + 100
    assert db.is_settled("cam", "a.jpg", key), "a file waiting for its retry is not taken early"
    assert db.due_retries() == []
    assert [r.rel_path for r in db.due_retries(now=first.next_attempt)] == ["a.jpg"]

    db.mark_queued("cam", "a.jpg", key, sha)  # the retry: same file, attempts carry on
    second = db.mark_failure("cam", "a.jpg", "cannot decode", max_attempts=3, backoff_seconds=100)
    assert second.attempts == 2 and second.next_attempt - second.updated == pytest.approx(200)
    db.mark_queued("cam", "a.jpg", key, sha)
    third = db.mark_failure("cam", "a.jpg", "cannot decode", max_attempts=3, backoff_seconds=100)
    assert third.status is Status.FAILED and third.next_attempt is None
    assert db.is_settled("cam", "a.jpg", key)
    assert db.due_retries(now=time.time() + 10**6) == []
    assert [(e.rel_path, e.error, e.attempts) for e in db.recent_errors()] == [("a.jpg", "cannot decode", 3)]
    assert db.counts() == {"failed": 1}
    assert db.finished_with_hash(sha) is None, "a failed file has no result to reuse"

    # The user replaces the file: a new file gets fresh attempts
    photo.write_bytes((DATA / "obama2.jpg").read_bytes())
    db.mark_queued("cam", "a.jpg", FileKey.of(photo), content_hash(photo))
    assert db.get("cam", "a.jpg").attempts == 0


def test_a_held_photo_waits_for_its_user_then_is_due_once_for_the_stronger_cloak(state_dir: Path, photo: Path) -> None:
    db = StateDB()
    key, sha = FileKey.of(photo), content_hash(photo)
    db.mark_queued("cam", "a.jpg", key, sha)
    db.mark_held("cam", "a.jpg", "held: a face is short of the target", preset="default")
    held = db.get("cam", "a.jpg")
    assert held.status is Status.HELD and held.outcome == "default" and held.output is None
    assert db.is_settled("cam", "a.jpg", key) and db.due_retries(now=time.time() + 10**6) == []
    assert [(e.rel_path, e.status) for e in db.recent_errors()] == [("a.jpg", Status.HELD)]
    assert db.counts() == {"held": 1} and db.finished_with_hash(sha) is None, "nothing to reuse: never published"
    assert not db.retry_now("cam", "a.jpg"), "a retry would only hold it again"

    assert db.cloak_stronger("cam", "a.jpg", "strong")
    assert not db.cloak_stronger("cam", "a.jpg", "strong"), "asked for once"
    assert db.is_settled("cam", "a.jpg", key), "a look at the file meanwhile does not cloak it as usual"
    assert [(r.rel_path, r.status) for r in db.due_retries()] == [("a.jpg", Status.STRONGER)]
    # Queued, then put back unstarted (a full queue, a shutdown): still asked for.
    db.mark_queued("cam", "a.jpg", key, sha)
    db.release("cam", "a.jpg", stronger=True)
    assert [(r.rel_path, r.status) for r in db.due_retries()] == [("a.jpg", Status.STRONGER)]

    # The stronger cloak could not protect it either: held by that preset, which is not asked for again.
    db.mark_queued("cam", "a.jpg", key, sha)
    db.mark_held("cam", "a.jpg", "a face still matches", preset="strong")
    assert not db.cloak_stronger("cam", "a.jpg", "strong")
    assert [event for event, _ in db.history("cam", "a.jpg")] == ["held", "held"]


def test_files_deleted_while_queued_are_forgotten_and_leave_the_counts(state_dir: Path, photo: Path) -> None:
    db = StateDB()
    src = photo.parent
    for name in ("queued.jpg", "retry.jpg", "busy.jpg", "done.jpg", "kept.jpg"):
        (src / name).write_bytes(photo.read_bytes() + name.encode())
        db.mark_queued("cam", name, FileKey.of(src / name), content_hash(src / name))
    db.mark_failure("cam", "retry.jpg", "boom", max_attempts=3, backoff_seconds=3600)
    db.mark_done("cam", "done.jpg", outcome="no_face", faces=0, faces_too_small=0, seconds=1.0, output=None)
    db.mark_queued("elsewhere", "x.jpg", FileKey.of(photo), content_hash(photo))  # a source no longer configured
    for name in ("queued.jpg", "retry.jpg", "busy.jpg", "done.jpg"):
        (src / name).unlink()
    db.close()

    db = StateDB()  # a restart
    forgotten = db.forget_vanished({"cam": src}, busy={("cam", "busy.jpg")})
    assert sorted(r.rel_path for r in forgotten) == ["queued.jpg", "retry.jpg"]
    assert db.get("cam", "done.jpg").status is Status.DONE, "a finished file's record is the outbox's to follow"
    assert db.get("cam", "busy.jpg").status is Status.QUEUED, "a job holds it, and records its end"
    assert db.counts() == {"done": 1, "done:no_face": 1, "queued": 3}
    db.close()
    report = status_report()
    assert report["counts"].get("retry") is None and report["recent_errors"] == []


def test_interrupted_work_is_found_after_a_crash(state_dir: Path, photo: Path) -> None:
    db = StateDB()
    db.mark_queued("cam", "a.jpg", FileKey.of(photo), content_hash(photo))
    db.mark_processing("cam", "a.jpg")
    del db  # no close: what a kill -9 leaves
    again = StateDB()
    assert [r.rel_path for r in again.interrupted()] == ["a.jpg"]
    again.release("cam", "a.jpg")
    assert again.get("cam", "a.jpg").status is Status.QUEUED and again.interrupted() == []
    again.forget("cam", "a.jpg")
    assert again.get("cam", "a.jpg") is None


def test_status_reads_while_the_daemon_writes(state_dir: Path, photo: Path) -> None:
    writer = StateDB()
    writer.heartbeat(waiting=2, message="1 in the queue", started=123.0)
    writer.mark_queued("cam", "a.jpg", FileKey.of(photo), content_hash(photo))
    reader = StateDB(writer.path, readonly=True)
    info = reader.daemon_info()
    assert info is not None and (info.pid, info.waiting, info.message, info.started) == (
        os.getpid(),
        2,
        "1 in the queue",
        123.0,
    )
    assert reader.counts() == {"queued": 1}
    with pytest.raises(sqlite3.OperationalError):
        reader.clear_daemon()
    writer.clear_daemon()
    assert reader.daemon_info() is None


def test_a_newer_schema_is_refused(state_dir: Path) -> None:
    StateDB().close()
    with sqlite3.connect(state_dir / "state.sqlite3") as raw:
        raw.execute("PRAGMA user_version=99")
    with pytest.raises(StateError, match="newer lowkeyd"):
        StateDB()


def test_publishing_is_one_rename_and_leaves_nothing_behind(state_dir: Path, tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "out")
    assert outbox.staging == state_dir / "staging", "same file system: staging stays out of the outbox"
    dest = outbox.destination("cam", Path("2024/a.jpg"))
    assert dest == tmp_path / "out" / "cam" / "2024" / "a.jpg"
    staged = outbox.stage(dest)
    assert staged.name == "a.jpg" and staged.parent.parent == outbox.staging
    staged.write_bytes(b"cloaked")
    inode = staged.stat().st_ino
    assert outbox.publish(staged, dest) == dest
    assert dest.read_bytes() == b"cloaked" and dest.stat().st_ino == inode
    assert list(outbox.staging.iterdir()) == []

    copy = outbox.publish_copy(dest, outbox.destination("phone", Path("b.jpg")))
    assert copy.read_bytes() == b"cloaked" and copy.stat().st_ino != inode
    assert list(outbox.staging.iterdir()) == []
    assert sorted(p.relative_to(outbox.root).as_posix() for p in outbox.root.rglob("*") if p.is_file()) == [
        "cam/2024/a.jpg",
        "phone/b.jpg",
    ]


def test_what_a_crash_left_in_staging_is_cleared(state_dir: Path, tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "out")
    for name in ("a.jpg", "b.jpg"):
        outbox.stage(outbox.destination("cam", Path(name))).write_bytes(b"half")
    assert Outbox(tmp_path / "out").clear_staging() == 2
    assert list(outbox.staging.iterdir()) == []


def test_staging_stays_on_the_outbox_file_system_and_out_of_the_synced_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not Path("/dev/shm").is_dir() or os.stat("/dev/shm").st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs a second file system (/dev/shm)")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as other:
        monkeypatch.setenv("LOWKEYD_STATE_DIR", other)
        outbox = Outbox(tmp_path / "out")
        assert outbox.staging == tmp_path / STAGING_NAME, "beside the outbox, on its file system"
        staged = outbox.stage(outbox.destination("cam", Path("a.jpg")))
        staged.write_bytes(b"x")
        assert outbox.publish(staged, outbox.destination("cam", Path("a.jpg"))).read_bytes() == b"x"
        assert outbox.unavailable() is None
        os.rename(tmp_path / "out", tmp_path / "gone")
        assert "missing" in (outbox.unavailable() or "")
        with pytest.raises(OutboxUnavailable):
            outbox.stage(outbox.destination("cam", Path("b.jpg")))
        assert not (tmp_path / "out").exists(), "a missing outbox is never made again by publishing"


def test_status_command_reports_counts_queue_and_errors(
    state_dir: Path, photo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status"]) == 1
    assert "the daemon has not run yet" in capsys.readouterr().err

    db = StateDB()
    key, sha = FileKey.of(photo), content_hash(photo)
    for name, outcome, faces in (("a.jpg", "cloaked", 2), ("b.jpg", "cloaked", 1), ("c.jpg", "no_face", 0)):
        db.mark_queued("cam", name, key, sha)
        db.mark_done("cam", name, outcome=outcome, faces=faces, faces_too_small=0, seconds=1.0, output=None)
    db.mark_queued("cam", "d.jpg", key, sha)
    db.mark_failure("cam", "d.jpg", "not a photo: cannot identify image file", max_attempts=1, backoff_seconds=1)
    db.mark_queued("cam", "e.jpg", key, sha)
    db.mark_queued("cam", "f.jpg", key, sha)
    db.mark_held("cam", "f.jpg", "held: a face is short of the target", preset="default")
    db.heartbeat(waiting=0, message="3 done, 1 in the queue", started=time.time() - 60)

    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "lowkeyd is running" in out and "3 done, 1 in the queue" in out
    assert "photos done: 3 (2 cloaked, 1 no face)" in out
    assert "faces cloaked: 3" in out and "queued: 1" in out and "failed: 1" in out
    assert "cam/d.jpg (1 attempt(s), gave up): not a photo: cannot identify image file" in out
    assert "held: 1" in out and "cam/f.jpg (0 attempt(s), held back, not published): held: a face is short" in out

    db.clear_daemon()
    assert main(["status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["running"] is False and report["daemon"] is None
    assert report["counts"] == {"done": 3, "done:cloaked": 2, "done:no_face": 1, "failed": 1, "held": 1, "queued": 1}
    assert report["faces_cloaked"] == 3
    assert [(e["path"], e["status"]) for e in report["recent_errors"]] == [("f.jpg", "held"), ("d.jpg", "failed")]


def test_a_second_daemon_on_the_same_state_is_refused(state_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "cam").mkdir()
    config = tmp_path / "config.yaml"
    config.write_text("sources: [{path: cam}]\noutbox: out\n")
    with single_instance(state_dir):
        done = subprocess.run(
            [sys.executable, "-m", "lowkeyd", "run", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 1
    assert f"another lowkeyd is already running on {state_dir} (pid {os.getpid()})" in done.stderr
    assert "Traceback" not in done.stderr


def test_state_files_are_the_users_alone(state_dir: Path, photo: Path) -> None:
    import stat

    from lowkeyd.daemon.hooks import HookLog

    old = os.umask(0o022)
    try:
        db, hooks = StateDB(), HookLog()
        db.mark_queued("cam", "a.jpg", FileKey.of(photo), content_hash(photo))
        hooks.add({"LOWKEYD_OUTPUT": "x"})
    finally:
        os.umask(old)
    files = [p for p in state_dir.iterdir() if p.name.endswith((".sqlite3", "-wal", "-shm"))]
    assert {p.name for p in files} >= {"state.sqlite3", "state.sqlite3-wal"}
    assert not {p.name for p in files} & {"hooks.sqlite3", "status-page.sqlite3"}, "one file for all of it"
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: 0o600 for p in files}
    db.close()
    hooks.close()


def test_the_state_folder_lock_and_staging_are_the_users_alone_whatever_the_umask(
    state_dir: Path, tmp_path: Path
) -> None:
    import stat

    state_dir.mkdir(mode=0o755)  # as an earlier version, or a umask of 022, left it
    (state_dir / "daemon.lock").touch(mode=0o644)
    old = os.umask(0o022)
    try:
        with single_instance(state_dir):
            outbox = Outbox(tmp_path / "out")
            db = StateDB()
    finally:
        os.umask(old)
    db.close()
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (state_dir, state_dir / "daemon.lock", outbox.staging)}
    assert outbox.staging == state_dir / "staging"
    assert modes == {"state": 0o700, "daemon.lock": 0o600, "staging": 0o700}


def test_status_into_a_closed_pipe_ends_quietly(state_dir: Path, photo: Path) -> None:
    db = StateDB()
    db.mark_queued("cam", "a.jpg", FileKey.of(photo), content_hash(photo))
    db.close()
    # Like `lowkeyd status | head -1` once head has gone: the reader is closed before anything is written.
    proc = subprocess.Popen(
        [sys.executable, "-m", "lowkeyd", "status"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 141 and err == "", err
