"""The real daemon, end to end: a `lowkeyd run` process, real folders, real models, a short attack.

Sync clients and phones are imitated by writing files the way they do
(temporary names renamed into place, slow writes with pauses, bursts). Every
daemon process a test starts is killed in teardown.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import piexif
import pytest
import yaml
from daemon_fixtures import (
    FAST_ATTACK,
    SLOW_ATTACK,
    assert_protected,
    face_photo,
    faceless_photo,
    wait_until,
)
from PIL import Image

from lowkeyd.cli.daemon import status_report
from lowkeyd.errors import PhotoError
from lowkeyd.photo import encode_photo, read_photo
from lowkeyd.photo.jpeg import image_data
from lowkeyd.serving.memory import BYTES_PER_PIXEL

pytestmark = pytest.mark.slow

# Test daemons must not be starved by everything else running on the machine.
WORK = {"nice": 0, "idle_priority": False, "batch_size": 4, "queue_size": 6}
START_TIMEOUT = 600  # model loading on a busy 2-core machine
PHOTO_SECONDS = 60  # per photo, on the same machine, for the bounds below
# For a daemon stopped or killed in the middle of a job: all 1000 steps, so that no machine finishes the job first.
ENDLESS_ATTACK = {**FAST_ATTACK, "steps": 1000, "target": None}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_slowly(path: Path, data: bytes, *, chunks: int = 8, pause: float = 0.3, stall_at: int | None = None, stall: float = 0.0) -> None:
    """Write like a phone or a sync client on a slow link: chunk by chunk, optionally stalling once."""
    step = -(-len(data) // chunks)
    with path.open("wb") as f:
        for n in range(chunks):
            f.write(data[n * step : (n + 1) * step])
            f.flush()
            time.sleep(stall if n == stall_at else pause)



class Daemon:
    """One `lowkeyd run` process, with the service manager's side of sd_notify."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log_path = log
        self.messages: list[str] = []
        self._socket_name = f"lowkeyd-e2e-{uuid.uuid4().hex}"
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind("\0" + self._socket_name)
        self._socket.settimeout(0.5)
        self._listening = True
        self._listener = threading.Thread(target=self._listen, daemon=True)
        self._listener.start()
        env = {k: v for k, v in os.environ.items() if k not in ("DBUS_SESSION_BUS_ADDRESS", "JOURNAL_STREAM")}
        env.update(NOTIFY_SOCKET="@" + self._socket_name, WATCHDOG_USEC="2000000", LOWKEYD_THREADS="2")
        with log.open("ab") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "lowkeyd", "run", "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                env=env,
            )

    def _listen(self) -> None:
        while self._listening:
            try:
                self.messages.extend(self._socket.recv(4096).decode().splitlines())
            except TimeoutError:
                continue
            except OSError:
                return

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        wait_until(condition, timeout, what, self.process, self.log)

    def wait_ready(self) -> None:
        self.wait_for(lambda: "READY=1" in self.messages, START_TIMEOUT, "READY=1")

    def stop(self, timeout: float = 60) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def close(self) -> None:
        self.kill()
        self._listening = False
        self._socket.close()
        self._listener.join(5)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Private state/config/runtime dirs, shared by the daemon processes and the in-process status reader."""
    for name in ("STATE", "CONFIG", "RUNTIME"):
        monkeypatch.setenv(f"LOWKEYD_{name}_DIR", str(tmp_path / name.lower()))
    (tmp_path / "src").mkdir()
    return tmp_path


@pytest.fixture
def start_daemon(env: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(**settings: object) -> Daemon:
        config = {
            "sources": [{"path": str(env / "src"), "name": "cam"}],
            "outbox": str(env / "out"),
            "attack": FAST_ATTACK,
            "work": WORK,
            "watch": {"settle_seconds": 1, "rescan_interval": 0},
            "retry": {"max_attempts": 2, "backoff_seconds": 1},
            **settings,
        }
        path = env / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        daemon = Daemon(path, env / "daemon.log")
        started.append(daemon)
        daemon.wait_ready()
        return daemon

    yield start
    for daemon in started:
        daemon.close()


def rows() -> dict[str, dict]:
    """The state database's rows by path, read-only, as `lowkeyd status` reads it."""
    import sqlite3

    from lowkeyd.daemon.store import default_state_path

    with sqlite3.connect(f"{default_state_path().as_uri()}?mode=ro", uri=True) as db:
        db.row_factory = sqlite3.Row
        return {r["rel_path"]: dict(r) for r in db.execute("SELECT * FROM files")}


def finished_rows() -> dict[str, dict]:
    return {name: row for name, row in rows().items() if row["status"] in ("done", "failed")}


def done_count() -> int:
    return status_report()["counts"].get("done", 0)


def outbox_files(out: Path) -> set[str]:
    return {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} if out.exists() else set()


@pytest.fixture(scope="module")
def evaluator():
    from lowkeyd.engine.evaluate import Evaluator

    return Evaluator.load("cpu")


class OutboxWatch:
    """Looks at the outbox every 50 ms, as a sync client would, and keeps what it saw."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.first_seen: dict[str, float] = {}
        self.unreadable: list[str] = []
        self._running = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while self._running:
            for name in outbox_files(self.out) - self.first_seen.keys():
                self.first_seen[name] = time.monotonic()
                try:
                    read_photo(self.out / name)
                except (PhotoError, FileNotFoundError) as exc:
                    self.unreadable.append(f"{name}: {exc}")
            time.sleep(0.05)

    def stop(self) -> None:
        self._running = False
        self._thread.join(5)


def test_sync_clients_slow_writers_and_a_burst_are_each_published_once(start_daemon, env: Path, evaluator) -> None:
    src, out = env / "src", env / "out"
    daemon = start_daemon()
    watch = OutboxWatch(out)
    originals: dict[str, bytes] = {}
    finished: dict[str, float] = {}

    def syncthing() -> None:
        (src / "sync").mkdir()
        data = originals["sync/IMG_S.jpg"] = face_photo(20)
        write_slowly(src / "sync" / ".syncthing.IMG_S.jpg.tmp", data)
        os.rename(src / "sync" / ".syncthing.IMG_S.jpg.tmp", src / "sync" / "IMG_S.jpg")

    def nextcloud() -> None:
        data = originals["IMG_N.jpg"] = face_photo(21)
        write_slowly(src / ".IMG_N.jpg.~3fa9c1", data)
        os.rename(src / ".IMG_N.jpg.~3fa9c1", src / "IMG_N.jpg")

    def direct() -> None:
        # Stalls for longer than the settle time half way: only the decode check holds it back.
        data = originals["IMG_D.jpg"] = face_photo(22)
        write_slowly(src / "IMG_D.jpg", data, stall_at=3, stall=3.0)
        finished["IMG_D.jpg"] = time.monotonic()

    def burst() -> None:
        (src / "burst").mkdir()
        for i in range(20):
            data = originals[f"burst/B{i:02d}.jpg"] = face_photo(i)
            (src / "burst" / f"B{i:02d}.jpg").write_bytes(data)

    writers = [threading.Thread(target=w) for w in (syncthing, nextcloud, direct, burst)]
    for w in writers:
        w.start()
    # Left incomplete by clients that gave up: never to be taken.
    (src / ".syncthing.GONE.jpg.tmp").write_bytes(face_photo(23)[:5000])
    (src / "IMG_P.jpg.part").write_bytes(face_photo(24))
    (src / "IMG_P.jpg.partial").write_bytes(face_photo(24))
    for w in writers:
        w.join(60)
    assert len(originals) == 23

    daemon.wait_for(lambda: len(finished_rows()) >= 23, 23 * PHOTO_SECONDS, "23 photos finished")
    time.sleep(2)  # anything published twice or late would show now
    watch.stop()

    expected = {f"cam/{name}" for name in originals}
    assert outbox_files(out) == expected
    assert set(watch.first_seen) == expected, "nothing else ever appeared in the outbox"
    assert watch.unreadable == [], "every file was complete when it first appeared"
    assert watch.first_seen["cam/IMG_D.jpg"] > finished["IMG_D.jpg"], "published before it was written"
    state = rows()
    assert set(state) == set(originals), "no temporary file was ever processed"
    for name, row in state.items():
        assert (row["status"], row["outcome"], row["attempts"], row["error"]) == ("done", "cloaked", 0, None), name
        assert row["faces"] >= 1, name
        assert (src / name).read_bytes() == originals[name], f"{name}: original modified"
    for name, data in originals.items():
        assert_protected(evaluator, data, out / "cam" / name)

    log = daemon.log()
    assert "Cloaked " in log, "the grouped notification is logged when there is no desktop"
    assert any(m.startswith("STATUS=") for m in daemon.messages)
    assert daemon.messages.count("WATCHDOG=1") >= 2
    assert daemon.stop() == 0
    assert "STOPPING=1" in daemon.messages


def test_restart_rename_duplicate_kill_9_and_sigterm(start_daemon, env: Path, evaluator) -> None:
    src, out = env / "src", env / "out"
    first = face_photo(0)
    (src / "a.jpg").write_bytes(first)
    daemon = start_daemon()
    daemon.wait_for(lambda: done_count() >= 1, 3 * PHOTO_SECONDS, "a.jpg done")
    before = rows()["a.jpg"]
    published = (out / "cam" / "a.jpg").stat()
    assert daemon.stop() == 0

    # A restart reprocesses nothing
    daemon = start_daemon(sources=[{"path": str(src), "name": "cam", "on_original_renamed": "copy"}])
    daemon.wait_for(lambda: "scan found 0 photo(s)" in daemon.log(), 60, "the start-up scan")
    time.sleep(2)
    assert rows()["a.jpg"] == before
    after = (out / "cam" / "a.jpg").stat()
    assert (after.st_ino, after.st_mtime_ns) == (published.st_ino, published.st_mtime_ns)

    # A renamed photo and a duplicate are recognised by their content, not cloaked again
    os.rename(src / "a.jpg", src / "renamed.jpg")
    (src / "copies").mkdir()
    (src / "copies" / "dup.jpg").write_bytes(first)
    def done(name: str) -> bool:
        return rows().get(name, {}).get("status") == "done"

    # (a.jpg's row is "gone" from now on, its cloaked copy kept: this source copies on a rename)
    daemon.wait_for(lambda: done("renamed.jpg") and done("copies/dup.jpg"), 60, "renamed.jpg and copies/dup.jpg done")
    state = rows()
    for name in ("renamed.jpg", "copies/dup.jpg"):
        assert state[name]["duplicate_of"] == "cam/a.jpg" and state[name]["seconds"] == 0
        assert (out / "cam" / name).read_bytes() == (out / "cam" / "a.jpg").read_bytes()
    assert status_report()["faces_cloaked"] == 1

    # kill -9 in the middle of a job
    assert daemon.stop() == 0
    daemon = start_daemon(attack=ENDLESS_ATTACK)
    second = face_photo(1)
    (src / "b.jpg").write_bytes(second)
    daemon.wait_for(lambda: rows().get("b.jpg", {}).get("status") == "processing", 60, "b.jpg being cloaked")
    os.kill(daemon.process.pid, signal.SIGKILL)
    daemon.process.wait(30)
    assert not (out / "cam" / "b.jpg").exists()
    daemon = start_daemon()
    daemon.wait_for(lambda: rows()["b.jpg"]["status"] == "done", 3 * PHOTO_SECONDS, "b.jpg done after the restart")
    assert rows()["b.jpg"]["attempts"] == 1, "the interrupted attempt counts (a photo that crashes us is not retried forever)"
    assert (src / "b.jpg").read_bytes() == second
    assert_protected(evaluator, second, out / "cam" / "b.jpg")
    assert list((env / "state" / "staging").iterdir()) == [], "the killed job's staging was cleared"

    # SIGTERM in the middle of a job (no grace: abandoned at once): a prompt, clean exit, and the job
    # is not counted as a failed attempt
    daemon.stop()
    daemon = start_daemon(attack=ENDLESS_ATTACK, work={**WORK, "stop_grace": 0})
    third = face_photo(2)
    (src / "c.jpg").write_bytes(third)
    daemon.wait_for(lambda: rows().get("c.jpg", {}).get("status") == "processing", 60, "c.jpg being cloaked")
    # Its 1000 steps take many minutes: a stop within stop()'s deadline is one that abandoned the job.
    assert daemon.stop() == 0
    assert rows()["c.jpg"]["status"] == "queued" and not (out / "cam" / "c.jpg").exists()
    daemon = start_daemon()
    daemon.wait_for(lambda: rows()["c.jpg"]["status"] == "done", 3 * PHOTO_SECONDS, "c.jpg done after the restart")
    assert rows()["c.jpg"]["attempts"] == 0
    assert_protected(evaluator, third, out / "cam" / "c.jpg")

    assert outbox_files(out) == {"cam/a.jpg", "cam/renamed.jpg", "cam/copies/dup.jpg", "cam/b.jpg", "cam/c.jpg"}
    assert list((env / "state" / "staging").iterdir()) == []
    assert daemon.stop() == 0


def test_corrupt_and_faceless_photos_follow_policy_and_show_in_status(start_daemon, env: Path) -> None:
    src, out = env / "src", env / "out"
    daemon = start_daemon(no_face="copy")
    (src / "garbage.jpg").write_bytes(os.urandom(20000))
    (src / "cut.jpg").write_bytes(face_photo(5)[:6000])  # a transfer that died and never resumed
    (src / "empty.jpg").write_bytes(faceless_photo(gps=True))
    daemon.wait_for(
        lambda: status_report()["counts"].get("failed", 0) >= 2 and done_count() >= 1, 120, "two failures and one done"
    )
    state = rows()
    assert (state["empty.jpg"]["status"], state["empty.jpg"]["outcome"]) == ("done", "no_face")
    assert state["garbage.jpg"]["status"] == state["cut.jpg"]["status"] == "failed"
    assert outbox_files(out) == {"cam/empty.jpg"}, "failures are never published"
    assert piexif.load(str(src / "empty.jpg"))["GPS"]
    assert not piexif.load(str(out / "cam" / "empty.jpg"))["GPS"], "strip_gps applies to copies too"

    shown = subprocess.run(
        [sys.executable, "-m", "lowkeyd", "status"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "lowkeyd is running" in shown and "failed: 2" in shown and "1 no face" in shown
    assert "cam/garbage.jpg (2 attempt(s), gave up)" in shown and "cam/cut.jpg (2 attempt(s), gave up)" in shown
    assert "Could not cloak 2 photos" in daemon.log() or "Could not cloak 1 photo" in daemon.log()
    assert daemon.stop() == 0

    # The other policy, after a restart with a changed config
    daemon = start_daemon(no_face="skip")
    # Another photo: the first one's sanitised copy, byte for byte, would be known as lowkeyd's own output.
    (src / "empty2.jpg").write_bytes(faceless_photo(gps=False, variant=1))
    daemon.wait_for(lambda: done_count() >= 2, 120, "empty2.jpg done")
    row = rows()["empty2.jpg"]
    assert (row["outcome"], row["output"]) == ("no_face", None)
    assert outbox_files(out) == {"cam/empty.jpg"}
    assert daemon.stop() == 0


def test_links_out_of_the_folder_fifos_and_devices_are_refused_once_and_hold_nothing_up(start_daemon, env: Path) -> None:
    src, out = env / "src", env / "out"
    (env / "private").mkdir()
    (env / "private" / "secret.jpg").write_bytes(faceless_photo(gps=False))
    # Already there at the start-up scan, where a hang would repeat at every restart.
    os.mkfifo(src / "fifo.jpg")
    (src / "devzero.jpg").symlink_to("/dev/zero")
    daemon = start_daemon(watch={"settle_seconds": 1, "rescan_interval": 2})
    # Written by a "sync peer" while it runs.
    (src / "innocent.jpg").symlink_to(env / "private" / "secret.jpg")
    os.mkfifo(src / "fifo2.jpg")
    (src / "later.jpg").write_bytes(faceless_photo(gps=True))
    refused = ("fifo.jpg", "devzero.jpg", "innocent.jpg", "fifo2.jpg")
    daemon.wait_for(lambda: rows().get("later.jpg", {}).get("status") == "done", 60, "later.jpg published")
    daemon.wait_for(lambda: set(refused) <= set(rows()), 30, "the refused files recorded")
    daemon.wait_for(lambda: daemon.log().count("scan found") >= 3, 60, "two more rescans")

    assert outbox_files(out) == {"cam/later.jpg"}, "nothing but the real photo is published"
    state = rows()
    for name, why in zip(refused, ("a FIFO", "outside the watched folder", "outside the watched folder", "a FIFO"), strict=True):
        assert state[name]["status"] == "failed" and why in state[name]["error"], name
        assert daemon.log().count(f"service: cam/{name}:") == 1, f"{name} reported once, not at every rescan"
    assert status_report()["running"], "the heartbeat went on"
    assert daemon.log().count("desktop notifications are off: no D-Bus session bus") == 1, "said once"
    for name in ("state.sqlite3", "state.sqlite3-wal"):
        path = env / "state" / name
        assert not path.exists() or stat.S_IMODE(path.stat().st_mode) == 0o600, name
    assert daemon.stop() == 0, "SIGTERM stops it"


@pytest.fixture
def small_disk(env: Path) -> Iterator[Path]:
    """A 2 MB tmpfs of its own (root only); the test is skipped where it cannot be mounted."""
    vol = env / "vol"
    vol.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(vol)], capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"a full disk needs a small file system of its own; cannot mount a tmpfs: {mounted.stderr.strip()}")
    yield vol
    subprocess.run(["umount", "-l", str(vol)], check=False)


def test_a_full_outbox_pauses_publishing_and_loses_no_photo(start_daemon, env: Path, small_disk: Path) -> None:
    src, out, staging = env / "src", small_disk / "out", small_disk / ".lowkeyd-staging"
    filler = small_disk / "filler"
    filler.write_bytes(bytes(1400 * 1024))  # leaves room for about two of the five photos
    daemon = start_daemon(outbox=str(out))
    assert staging.is_dir(), "staging is on the outbox's file system, beside the outbox, not in it"
    names = [f"p{i}.jpg" for i in range(5)]
    for i, name in enumerate(names):
        (src / name).write_bytes(faceless_photo(gps=False, variant=i))
    daemon.wait_for(lambda: "publishing paused" in daemon.log(), 120, "publishing paused")
    daemon.wait_for(lambda: daemon.process.poll() is None and len(rows()) == 5, 60, "all five seen")
    assert not any(row["status"] == "failed" for row in rows().values()), "a full disk fails no photo"
    daemon.wait_for(lambda: "publishing paused" in status_report()["daemon"]["status"], 30, "status saying so")

    filler.unlink()
    daemon.wait_for(lambda: done_count() == 5, 120, "all five published once there is room")
    assert outbox_files(out) == {f"cam/{name}" for name in names}
    for name, row in rows().items():
        assert (row["attempts"], row["error"]) == (0, None), name
    log = daemon.log()
    assert log.count("WARNING lowkeyd.daemon.service: publishing paused") == 1, "said once"
    assert "publishing resumed" in log
    assert list(staging.iterdir()) == []
    assert daemon.stop() == 0


def test_a_photo_without_a_face_does_not_wait_behind_a_face_being_cloaked(start_daemon, env: Path, evaluator) -> None:
    src, out = env / "src", env / "out"
    daemon = start_daemon(attack=SLOW_ATTACK)
    face = face_photo(4)
    (src / "face.jpg").write_bytes(face)
    (src / "empty.jpg").write_bytes(faceless_photo(gps=False))
    daemon.wait_for(lambda: rows().get("empty.jpg", {}).get("status") == "done", 120, "empty.jpg published")
    assert rows()["face.jpg"]["status"] != "done" and outbox_files(out) == {"cam/empty.jpg"}, "it went first"
    daemon.wait_for(lambda: rows()["face.jpg"]["status"] == "done", 10 * PHOTO_SECONDS, "face.jpg published")
    assert_protected(evaluator, face, out / "cam" / "face.jpg")
    assert daemon.stop() == 0


def test_photos_deleted_while_queued_leave_the_queue_running_or_stopped(start_daemon, env: Path) -> None:
    src = env / "src"
    unfinished = ("queued", "processing", "retry")
    slow = {"attack": SLOW_ATTACK}
    daemon = start_daemon(**slow)
    (src / "face.jpg").write_bytes(face_photo(7))
    daemon.wait_for(lambda: rows().get("face.jpg", {}).get("status") == "processing", PHOTO_SECONDS, "face.jpg started")
    for name, i in (("q1.jpg", 8), ("q2.jpg", 9)):
        (src / name).write_bytes(face_photo(i))
    daemon.wait_for(lambda: {"q1.jpg", "q2.jpg"} <= rows().keys(), PHOTO_SECONDS, "q1, q2 queued")
    assert daemon.stop() == 0
    assert {rows()[n]["status"] for n in ("q1.jpg", "q2.jpg")} <= set(unfinished), "stopped while they waited"

    (src / "q1.jpg").unlink()  # while the daemon is stopped
    daemon = start_daemon(**slow)
    daemon.wait_for(lambda: "q1.jpg" not in rows(), 30, "q1.jpg forgotten")
    (src / "q2.jpg").unlink()  # while it waits behind face.jpg
    daemon.wait_for(lambda: rows()["face.jpg"]["status"] == "done", 10 * PHOTO_SECONDS, "face.jpg published")
    daemon.wait_for(lambda: "q2.jpg" not in rows(), 5 * PHOTO_SECONDS, "q2.jpg forgotten")
    counts = status_report()["counts"]
    assert not any(counts.get(status) for status in unfinished), counts
    assert daemon.stop() == 0
    assert "deleted before it was cloaked; forgotten" in daemon.log()


def test_a_published_copy_is_known_by_its_content_not_by_a_marker(start_daemon, env: Path, evaluator) -> None:
    src, out = env / "src", env / "out"
    daemon = start_daemon()
    original = face_photo(5)
    (src / "a.jpg").write_bytes(original)
    daemon.wait_for(lambda: rows().get("a.jpg", {}).get("status") == "done", 3 * PHOTO_SECONDS, "a.jpg done")
    published = (out / "cam" / "a.jpg").read_bytes()
    assert b"lowkeyd" not in published and read_photo(published).cloak_marker is None  # mark_published is off

    # lowkeyd's own output copied back into a watched folder: known by its content, not cloaked twice
    (src / "again.jpg").write_bytes(published)
    # an uncloaked face carrying a marker: anyone can write one, so it is cloaked like any photo
    forged = encode_photo(read_photo(face_photo(6)), read_photo(face_photo(6)).rgb, marker={"version": "0.1.0"})
    assert read_photo(forged).cloak_marker is not None
    (src / "forged.jpg").write_bytes(forged)
    finished = ("again.jpg", "forged.jpg")
    daemon.wait_for(lambda: all(rows().get(n, {}).get("status") == "done" for n in finished), 3 * PHOTO_SECONDS, "both done")
    state = rows()
    assert state["again.jpg"]["outcome"] == "already_cloaked" and state["again.jpg"]["faces"] == 0
    assert image_data((out / "cam" / "again.jpg").read_bytes()) == image_data(published), "its pixels left alone"
    assert state["forged.jpg"]["outcome"] == "cloaked" and state["forged.jpg"]["faces"] == 1
    assert (out / "cam" / "forged.jpg").read_bytes() != forged
    assert_protected(evaluator, forged, out / "cam" / "forged.jpg")
    assert daemon.stop() == 0


def _peak_rss(pid: int) -> tuple[int, int]:
    """(resident now, peak resident) of a process, in bytes."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return (int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024)


def test_a_photo_at_the_automatic_limit_keeps_to_its_share_of_memory_and_holds_up_no_other(
    start_daemon, env: Path
) -> None:
    """The limit the daemon picks keeps a photo's peak under an eighth of the machine's memory; a photo
    over it is refused from its header; a small photo behind a large one does not wait for it."""
    import re

    from PIL import Image

    src, out = env / "src", env / "out"
    daemon = start_daemon()
    limit = float(re.search(r"photos up to (\d+) megapixels", daemon.log()).group(1)) * 1e6
    width = int((0.9 * limit * 4 / 3) ** 0.5)
    with Image.open(io.BytesIO(faceless_photo(gps=False))) as small:
        big = small.resize((width, int(0.9 * limit / width)), Image.Resampling.BILINEAR)  # still without a face
    big.save(env / "big.png", compress_level=1)
    del big
    Image.new("RGB", (width, int(1.1 * limit / width)), (90, 120, 150)).save(env / "huge.png")
    ready_rss, _ = _peak_rss(daemon.process.pid)
    Path(f"/proc/{daemon.process.pid}/clear_refs").write_text("5")  # its peak from here on (Linux 4.0+)

    os.rename(env / "big.png", src / "big.png")
    daemon.wait_for(lambda: rows().get("big.png", {}).get("status") == "processing", PHOTO_SECONDS, "big.png started")
    (src / "small.jpg").write_bytes(faceless_photo(gps=False, variant=3))
    daemon.wait_for(lambda: rows().get("small.jpg", {}).get("status") == "done", 2 * PHOTO_SECONDS, "small.jpg done")
    assert rows()["big.png"]["status"] == "processing", "small.jpg did not wait for big.png"
    daemon.wait_for(lambda: rows()["big.png"]["status"] in ("done", "failed"), 20 * PHOTO_SECONDS, "big.png")
    assert rows()["big.png"]["status"] == "done", rows()["big.png"]["error"]
    assert outbox_files(out) == {"cam/big.png", "cam/small.jpg"}
    daemon.wait_for(
        lambda: _peak_rss(daemon.process.pid)[0] - ready_rss < 0.5 * 2**30, 30, "the photo's memory given back"
    )
    after, peak = _peak_rss(daemon.process.pid)
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    print(f"limit {limit / 1e6:.0f} MP; RSS at ready {ready_rss / 2**30:.2f} GiB, peak {peak / 2**30:.2f} GiB, "
          f"after {after / 2**30:.2f} GiB, of {total / 2**30:.1f} GiB")
    assert peak - ready_rss < total / 8
    assert peak - ready_rss < 0.9 * limit * BYTES_PER_PIXEL, "decoded once: within what the limit assumes"

    Path(f"/proc/{daemon.process.pid}/clear_refs").write_text("5")
    before, _ = _peak_rss(daemon.process.pid)
    os.rename(env / "huge.png", src / "huge.png")
    daemon.wait_for(lambda: rows().get("huge.png", {}).get("status") == "failed", 2 * PHOTO_SECONDS, "huge.png refused")
    assert "megapixels, over the limit" in rows()["huge.png"]["error"]
    # Decoded, its pixels alone would take 3.3 bytes for each pixel of the limit.
    assert _peak_rss(daemon.process.pid)[1] - before < limit, "refused from its header: not a pixel decoded"
    assert daemon.stop() == 0


def _event_hook(env: Path) -> dict:
    """A publish hook that writes down each event it is run for."""
    hook = env / "hook"
    hook.write_text('#!/bin/sh\necho "$LOWKEYD_EVENT $LOWKEYD_OUTPUT_REL ${LOWKEYD_PREVIOUS_OUTPUT_REL:-}" >> "$0.events"\n')
    hook.chmod(0o755)
    return {"command": [str(hook)]}


def _events(env: Path) -> list[str]:
    path = env / "hook.events"
    return sorted(line.strip() for line in path.read_text().splitlines()) if path.exists() else []


def _follow_policy(start_daemon, env: Path, deleted: str, renamed: str) -> tuple[Path, bytes]:
    """Publish a..d, then delete a and rename b while the daemon runs, c and d while it is stopped.

    Returns the outbox and the bytes of a file put in the outbox by someone else.
    """
    src, out = env / "src", env / "out"
    settings = {
        "sources": [{"path": str(src), "name": "cam", "on_original_deleted": deleted, "on_original_renamed": renamed}],
        "on_published": _event_hook(env),
        "watch": {"settle_seconds": 1, "rescan_interval": 0},
    }
    for i, name in enumerate("abcd"):
        (src / f"{name}.jpg").write_bytes(faceless_photo(gps=False, variant=i))
    daemon = start_daemon(**settings)
    daemon.wait_for(lambda: done_count() == 4, 120, "a-d published")
    mine = faceless_photo(gps=False, variant=9)
    (out / "cam" / "mine.jpg").write_bytes(mine)  # the user's own file in the outbox
    (out / "cam" / "sub").mkdir()
    (out / "cam" / "sub" / "mine.jpg").write_bytes(mine)

    (src / "a.jpg").unlink()
    (src / "sub").mkdir()
    os.rename(src / "b.jpg", src / "sub" / "b2.jpg")
    daemon.wait_for(lambda: {"a.jpg", "b.jpg"} <= {n for n, r in rows().items() if r["status"] == "gone"}, 60, "a, b gone")
    daemon.wait_for(lambda: rows().get("sub/b2.jpg", {}).get("status") == "done", 60, "sub/b2.jpg done")
    assert daemon.stop() == 0

    (src / "c.jpg").unlink()
    os.rename(src / "d.jpg", src / "d2.jpg")
    daemon = start_daemon(**settings)
    daemon.wait_for(lambda: {"c.jpg", "d.jpg"} <= {n for n, r in rows().items() if r["status"] == "gone"}, 60, "c, d gone")
    daemon.wait_for(lambda: rows().get("d2.jpg", {}).get("status") == "done", 60, "d2.jpg done")
    time.sleep(2)  # a late, wrong removal would show now
    assert daemon.stop() == 0
    state = rows()
    for name in ("sub/b2.jpg", "d2.jpg"):
        assert state[name]["seconds"] == 0, f"{name}: its earlier result reused, not cloaked again"
    assert (out / "cam" / "mine.jpg").read_bytes() == mine == (out / "cam" / "sub" / "mine.jpg").read_bytes()
    return out, mine


def test_remove_and_move_follow_deletions_and_renames_running_or_stopped(start_daemon, env: Path) -> None:
    out, _ = _follow_policy(start_daemon, env, "remove", "move")
    assert outbox_files(out) == {"cam/sub/b2.jpg", "cam/d2.jpg", "cam/mine.jpg", "cam/sub/mine.jpg"}
    assert _events(env) == sorted(
        [f"published cam/{n}.jpg" for n in "abcd"]
        + ["removed cam/a.jpg", "removed cam/c.jpg", "renamed cam/sub/b2.jpg cam/b.jpg", "renamed cam/d2.jpg cam/d.jpg"]
    )
    state = rows()
    assert state["a.jpg"]["output"] is None and state["c.jpg"]["output"] is None
    from lowkeyd.daemon.state import StateDB

    db = StateDB(readonly=True)
    assert [e for e, _ in db.history("cam", "a.jpg")] == ["published", "removed"]
    assert db.history("cam", "b.jpg")[-1] == ("renamed", "cam/sub/b2.jpg")
    assert db.history("cam", "sub/b2.jpg")[-1] == ("renamed_from", "cam/b.jpg")
    db.close()
    shown = subprocess.run(
        [sys.executable, "-m", "lowkeyd", "status"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "originals deleted or renamed: 4 (2 copies removed, 2 renamed)" in shown


def test_the_users_own_files_in_the_outbox_are_never_overwritten_moved_or_removed(start_daemon, env: Path) -> None:
    src, out = env / "src", env / "out"
    daemon = start_daemon(sources=[{"path": str(src), "name": "cam", "on_original_deleted": "remove"}])
    for i, name in enumerate("ab"):
        (src / f"{name}.jpg").write_bytes(faceless_photo(gps=False, variant=i))
    daemon.wait_for(lambda: done_count() == 2, 120, "a, b published")
    mine = {name: faceless_photo(gps=False, variant=10 + i) for i, name in enumerate(("a.jpg", "c.jpg", "mine.jpg"))}
    (out / "cam" / "a.tmp").write_bytes(mine["a.jpg"])
    os.replace(out / "cam" / "a.tmp", out / "cam" / "a.jpg")  # the user's own file in place of a's copy
    for name in ("c.jpg", "mine.jpg"):
        (out / "cam" / name).write_bytes(mine[name])

    (src / "c.jpg").write_bytes(faceless_photo(gps=False, variant=2))  # a photo named like a file of the user's
    os.rename(src / "b.jpg", src / "mine.jpg")  # an original renamed onto a file of the user's
    (src / "a.jpg").unlink()  # the original whose copy the user replaced
    daemon.wait_for(lambda: rows().get("a.jpg", {}).get("status") == "gone", 60, "a.jpg gone")
    daemon.wait_for(
        lambda: all(rows().get(n, {}).get("status") == "done" for n in ("c.jpg", "mine.jpg")), 60, "c, mine done"
    )
    assert {name: (out / "cam" / name).read_bytes() for name in mine} == mine
    assert outbox_files(out) == {"cam/a.jpg", "cam/c.jpg", "cam/mine.jpg", "cam/c (lowkeyd 2).jpg", "cam/mine (lowkeyd 2).jpg"}
    assert rows()["mine.jpg"]["seconds"] == 0, "b's copy moved along, under a name of its own"
    assert daemon.stop() == 0
    shown = subprocess.run(
        [sys.executable, "-m", "lowkeyd", "status"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "never overwritten or removed: 2 with a copy published beside it" in shown
    assert "1 left where lowkeyd's copy had been" in shown
    log = daemon.log()
    assert log.count("is not a file lowkeyd wrote") == 2 and log.count("left alone") == 3, "each said once"


def test_keep_and_copy_leave_every_published_copy_running_or_stopped(start_daemon, env: Path) -> None:
    out, _ = _follow_policy(start_daemon, env, "keep", "copy")
    names = {"a", "b", "c", "d", "sub/b2", "d2", "mine", "sub/mine"}
    assert outbox_files(out) == {f"cam/{n}.jpg" for n in names}
    assert _events(env) == sorted(f"published cam/{n}.jpg" for n in names - {"mine", "sub/mine"})
    state = rows()
    assert state["a.jpg"]["status"] == state["c.jpg"]["status"] == "gone"
    assert state["a.jpg"]["output"] == str(out / "cam" / "a.jpg"), "the kept copy is still known"


# The shipped preset's whole attack (up to 80 steps with LPIPS) on one face, on a busy 2-core machine.
DEFAULT_PRESET_SECONDS = 1200
DLIB_THRESHOLD = 0.6  # dlib's own: descriptors closer than this are the same person


def dlib_descriptor(rgb: np.ndarray) -> np.ndarray:
    """The one face's 128-d descriptor by dlib alone: its HOG detector, its 5-point landmarks, its network."""
    import dlib

    from lowkeyd.engine.weights import weight_path

    [box] = dlib.get_frontal_face_detector()(rgb, 1)
    shape = dlib.shape_predictor(str(weight_path("dlib_shape_predictor_5")))(rgb, box)
    return np.array(dlib.face_recognition_model_v1(str(weight_path("dlib_resnet_v1"))).compute_face_descriptor(rgb, shape))


def test_the_shipped_default_preset_protects_a_face_through_the_daemon(start_daemon, env: Path) -> None:
    """Every other daemon test shortens the attack; this one runs the preset users get, unchanged, and judges the
    published copy with a recogniser call of its own instead of the pipeline's verdict."""
    src, out = env / "src", env / "out"
    original = face_photo(0)
    daemon = start_daemon(attack={})
    (src / "me.jpg").write_bytes(original)
    daemon.wait_for(
        lambda: rows().get("me.jpg", {}).get("status") in ("done", "failed"), DEFAULT_PRESET_SECONDS, "me.jpg finished"
    )
    row = rows()["me.jpg"]
    assert (row["status"], row["outcome"], row["faces"]) == ("done", "cloaked", 1), row
    published = read_photo(out / "cam" / "me.jpg")
    assert published.cloak_marker is None  # published copies say nothing of lowkeyd by default

    source = read_photo(original).rgb
    reference = dlib_descriptor(source)
    # The recogniser does match the face as uploaded uncloaked (the same photo re-encoded), so a miss below counts.
    resaved = io.BytesIO()
    Image.fromarray(source).save(resaved, "JPEG", quality=85)
    assert np.linalg.norm(dlib_descriptor(read_photo(resaved.getvalue()).rgb) - reference) < DLIB_THRESHOLD
    distance = np.linalg.norm(dlib_descriptor(published.rgb) - reference)
    assert distance >= DLIB_THRESHOLD, f"dlib still matches the published face (distance {distance:.3f})"
    assert daemon.stop() == 0
