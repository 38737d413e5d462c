"""The publish hook: real commands (shell scripts) run per published photo, recorded, timed out, rerun."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lowkeyd.daemon.hooks import HookLog, PublishHook, hook_report
from lowkeyd.serving.jobs import Published


@pytest.fixture
def outbox(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    (out / "cam" / "2024").mkdir(parents=True)
    return out


def published(outbox: Path, name: str = "a.jpg") -> Published:
    photo = outbox / "cam" / "2024" / name
    photo.write_bytes(b"\xff\xd8 not decoded by the hook")
    return Published(
        output=photo,
        outbox=outbox,
        source=Path("/photos/camera/2024") / name,
        source_name="cam",
        status="cloaked",
        faces=2,
        faces_too_small=1,
        preset="default",
        seconds=1.5,
    )


def script(path: Path, body: str) -> list[str]:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return [str(path)]


def hook(command: list[str], log: HookLog, *, timeout: float = 20, concurrency: int = 1) -> PublishHook:
    return PublishHook(command, timeout=timeout, concurrency=concurrency, record=log)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Poll until ``condition`` holds; the deadline is generous, only there so a broken runner fails instead of hanging."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def gated(path: Path, started: Path, gate: Path) -> list[str]:
    """A hook that says it started, then waits until the test opens the gate (at most two minutes)."""
    body = f'echo "$LOWKEYD_OUTPUT_REL" >> "{started}"\ni=0\n'
    body += f'while [ ! -e "{gate}" ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i + 1)); done\n'
    return script(path, body)


def test_the_command_gets_the_photo_and_its_metadata_in_the_environment(tmp_path: Path, outbox: Path) -> None:
    seen = tmp_path / "seen"
    command = script(
        tmp_path / "hook",
        f'env | grep ^LOWKEYD_ | sort > "{seen}"\ncat "$LOWKEYD_OUTPUT" > "{seen}.photo"\n',
    )
    log = HookLog(tmp_path / "state.sqlite3")
    runner = hook(command, log)
    runner.published(published(outbox))
    assert runner.wait_idle(20)
    runner.stop()
    env = dict(line.split("=", 1) for line in seen.read_text().splitlines())
    assert env["LOWKEYD_OUTPUT"] == str(outbox / "cam/2024/a.jpg")
    assert env["LOWKEYD_OUTPUT_REL"] == "cam/2024/a.jpg"
    assert env["LOWKEYD_OUTBOX"] == str(outbox)
    assert env["LOWKEYD_SOURCE"] == "/photos/camera/2024/a.jpg"
    assert env["LOWKEYD_SOURCE_NAME"] == "cam"
    assert (env["LOWKEYD_STATUS"], env["LOWKEYD_FACES"], env["LOWKEYD_FACES_TOO_SMALL"]) == ("cloaked", "2", "1")
    assert (env["LOWKEYD_PRESET"], env["LOWKEYD_SECONDS"]) == ("default", "1.500")
    assert Path(f"{seen}.photo").read_bytes() == (outbox / "cam/2024/a.jpg").read_bytes()
    assert log.counts() == {"ok": 1, "failed": 0, "pending": 0}


def test_failures_are_recorded_with_the_commands_message_and_reported(tmp_path: Path, outbox: Path) -> None:
    path = tmp_path / "state.sqlite3"
    log = HookLog(path)
    failing = hook(script(tmp_path / "hook", 'echo "upload refused: quota exceeded" >&2\nexit 3\n'), log)
    failing.published(published(outbox))
    assert failing.wait_idle(20)
    failing.stop()
    missing = hook([str(tmp_path / "no-such-command")], log)
    missing.published(published(outbox, "b.jpg"))
    assert missing.wait_idle(20)
    missing.stop()

    report = hook_report(path)
    assert report is not None
    assert report["counts"] == {"ok": 0, "failed": 2, "pending": 0}
    errors = {Path(f["output"]).name: f["error"] for f in report["recent_failures"]}
    assert errors["a.jpg"] == "exit status 3: upload refused: quota exceeded"
    assert errors["b.jpg"].startswith(f"cannot run {tmp_path / 'no-such-command'}: ")


def test_a_hook_past_its_timeout_is_killed_with_its_children(tmp_path: Path, outbox: Path) -> None:
    child_pid = tmp_path / "child.pid"
    # The shell starts a child (as a script calling rclone would); killing only the shell would leave it running.
    command = script(tmp_path / "hook", f'sleep 60 &\necho $! > "{child_pid}"\nwait\n')
    log = HookLog(tmp_path / "state.sqlite3")
    runner = hook(command, log, timeout=1)
    runner.published(published(outbox))
    # Long before the child's 60 s sleep would end on its own: only the timeout's kill ends the run.
    assert runner.wait_idle(45)
    runner.stop()
    [failure] = log.recent_failures()
    assert failure.error == "timed out after 1 s"
    pid = int(child_pid.read_text())
    wait_for(lambda: not _alive(pid), "the hook's child to be killed", timeout=45)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; only its parent has not reaped it yet.
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"


def test_publishing_never_waits_for_the_hook(tmp_path: Path, outbox: Path) -> None:
    started, gate = tmp_path / "started", tmp_path / "gate"
    log = HookLog(tmp_path / "state.sqlite3")
    runner = hook(gated(tmp_path / "hook", started, gate), log, timeout=300)
    # No hook can finish before the gate opens, and it opens only once all five published() calls are back.
    publisher = threading.Thread(target=lambda: [runner.published(published(outbox, f"{i}.jpg")) for i in range(5)])
    try:
        publisher.start()
        publisher.join(90)
        assert not publisher.is_alive(), "published() waited for a hook"
        wait_for(started.exists, "the first hook to start")
        assert log.counts() == {"ok": 0, "failed": 0, "pending": 5}
    finally:
        gate.touch()
    assert runner.wait_idle(60)
    runner.stop()
    assert log.counts() == {"ok": 5, "failed": 0, "pending": 0}


def test_runs_cut_short_by_a_stop_run_again_on_the_next_start(tmp_path: Path, outbox: Path) -> None:
    runs, started = tmp_path / "runs", tmp_path / "started"
    log = HookLog(tmp_path / "state.sqlite3")
    # Never opened: the running hook is cut short by the stop.
    first = hook(gated(tmp_path / "slow", started, tmp_path / "gate"), log, timeout=300)
    first.published(published(outbox, "a.jpg"))
    first.published(published(outbox, "b.jpg"))
    wait_for(started.exists, "the first hook to start")
    first.stop(grace=0)
    assert log.counts() == {"ok": 0, "failed": 0, "pending": 2}

    # The next daemon start, with a hook that finishes.
    second = hook(script(tmp_path / "quick", f'echo "$LOWKEYD_OUTPUT_REL" >> "{runs}"\n'), HookLog(log.path))
    second.start()
    assert second.wait_idle(20)
    second.stop()
    assert sorted(runs.read_text().split()) == ["cam/2024/a.jpg", "cam/2024/b.jpg"]
    assert log.counts() == {"ok": 2, "failed": 0, "pending": 0}


def test_a_photo_gone_from_the_outbox_is_a_failure_not_a_run(tmp_path: Path, outbox: Path) -> None:
    ran = tmp_path / "ran"
    log = HookLog(tmp_path / "state.sqlite3")
    event = published(outbox)
    log.add(event.environment())
    event.output.unlink()
    runner = hook(script(tmp_path / "hook", f'touch "{ran}"\n'), log)
    runner.start()
    assert runner.wait_idle(20)
    runner.stop()
    assert not ran.exists()
    [failure] = log.recent_failures()
    assert failure.error == "the photo is no longer in the outbox"


def test_no_hook_run_means_nothing_to_report(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    assert hook_report(path) is None
    HookLog(path).close()
    assert hook_report(path) is None, "a state database the hook never ran in"


RCLONE_HOOK = Path(__file__).resolve().parent.parent / "service" / "rclone" / "lowkeyd-rclone-upload"


@pytest.mark.skipif(shutil.which("rclone") is None, reason="rclone is not installed (apt-get install rclone)")
def test_the_rclone_hook_uploads_each_photo_into_its_folder_on_the_remote(tmp_path: Path, outbox: Path) -> None:
    # A local folder is a remote like any other to rclone; no rclone.conf is needed for it.
    remote = tmp_path / "remote"
    log = HookLog(tmp_path / "state.sqlite3")
    runner = hook([str(RCLONE_HOOK), f"{remote}/Photos"], log)
    photos = [published(outbox, "a.jpg"), published(outbox, "b.jpg")]
    top = outbox / "c.jpg"
    top.write_bytes(b"\xff\xd8 in the outbox's top folder")
    photos.append(Published(top, outbox, Path("/photos/c.jpg"), "cam", "no_face", 0, 0, "default", 0.1))
    for photo in photos:
        runner.published(photo)
    assert runner.wait_idle(60)
    runner.stop()
    assert log.counts() == {"ok": 3, "failed": 0, "pending": 0}, log.recent_failures()
    uploaded = {p.relative_to(remote).as_posix(): p.read_bytes() for p in remote.rglob("*") if p.is_file()}
    assert uploaded == {
        "Photos/cam/2024/a.jpg": photos[0].output.read_bytes(),
        "Photos/cam/2024/b.jpg": photos[1].output.read_bytes(),
        "Photos/c.jpg": top.read_bytes(),
    }


def test_the_rclone_hook_without_a_destination_fails_with_its_reason(tmp_path: Path, outbox: Path) -> None:
    log = HookLog(tmp_path / "state.sqlite3")
    runner = hook([str(RCLONE_HOOK)], log)
    runner.published(published(outbox))
    assert runner.wait_idle(20)
    runner.stop()
    [failure] = log.recent_failures()
    assert failure.error.startswith("exit status 2: lowkeyd-rclone-upload: no destination")


# Runs one chatty hook in a fresh process and reports the most its resident memory grew meanwhile: current RSS,
# sampled, not the peak (ru_maxrss), which whatever ran in the process before has already pushed far higher.
_MEMORY_PROBE = """
import json, sys, threading
from pathlib import Path
from lowkeyd.daemon.hooks import HookLog, PublishHook
from lowkeyd.serving.jobs import Published

def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

command, photo, outbox, db = sys.argv[1:]
log = HookLog(Path(db))
runner = PublishHook([command], timeout=120, record=log)
event = Published(Path(photo), Path(outbox), Path("/photos/a.jpg"), "cam", "cloaked", 1, 0, "default", 1.0)
baseline, peak, done = rss(), [0], threading.Event()

def sample():
    while not done.wait(0.005):
        peak[0] = max(peak[0], rss())

sampler = threading.Thread(target=sample)
sampler.start()
runner.published(event)
idle = runner.wait_idle(120)
done.set()
sampler.join()
runner.stop()
print(json.dumps({"idle": idle, "grown": peak[0] - baseline, "error": log.recent_failures()[0].error}))
"""


def test_a_chatty_hook_keeps_only_the_end_of_its_output(tmp_path: Path, outbox: Path) -> None:
    # 200 MB of output, then the line that says why it failed.
    command = script(tmp_path / "hook", "head -c 200000000 /dev/zero | tr '\\0' x\necho\necho 'the reason' >&2\nexit 2\n")
    event = published(outbox)
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, command[0], str(event.output), str(outbox), str(tmp_path / "state.sqlite3")],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["idle"]
    error = report["error"]
    assert error.startswith("exit status 2: ...") and error.endswith("the reason") and len(error) < 1000
    grown_mb = report["grown"] / 2**20
    assert grown_mb < 50, f"the output was held in memory ({grown_mb:.0f} MB)"


@pytest.mark.skipif(shutil.which("rclone") is None, reason="rclone is not installed (apt-get install rclone)")
def test_the_rclone_hook_never_shows_a_partial_file_and_mirrors_removals_and_renames(
    tmp_path: Path, outbox: Path
) -> None:
    import threading

    remote = tmp_path / "remote"
    final = remote / "Photos" / "cam" / "2024" / "big.jpg"
    big = outbox / "cam" / "2024" / "big.jpg"
    big.parent.mkdir(parents=True, exist_ok=True)
    big.write_bytes(os.urandom(300 << 20))  # large enough for the copy to be seen under way
    size = big.stat().st_size
    seen_partial: list[int] = []
    watching = True

    def watch() -> None:
        while watching:
            try:
                if (now := final.stat().st_size) != size:
                    seen_partial.append(now)
            except FileNotFoundError:
                pass

    watcher = threading.Thread(target=watch)
    watcher.start()
    log = HookLog(tmp_path / "state.sqlite3")
    runner = hook([str(RCLONE_HOOK), f"{remote}/Photos"], log, timeout=300)
    photo = Published(big, outbox, Path("/photos/big.jpg"), "cam", "cloaked", 1, 0, "default", 1.0)
    runner.published(photo)
    assert runner.wait_idle(300)
    watching = False
    watcher.join()
    assert seen_partial == [], "a half-written file appeared under its final name"
    assert final.stat().st_size == size and not any(p.name.endswith(".lowkeyd-partial") for p in remote.rglob("*"))

    moved = outbox / "cam" / "2025" / "big.jpg"
    moved.parent.mkdir(parents=True)
    big.rename(moved)
    runner.published(Published(moved, outbox, Path("/photos/2025/big.jpg"), "cam", "cloaked", 1, 0, "default", 0.0,
                               event="renamed", previous=big))
    assert runner.wait_idle(120)
    assert not final.exists() and (remote / "Photos" / "cam" / "2025" / "big.jpg").stat().st_size == size
    moved.unlink()
    runner.published(Published(moved, outbox, Path("/photos/2025/big.jpg"), "cam", "cloaked", 1, 0, "default", 0.0,
                               event="removed"))
    assert runner.wait_idle(120)
    runner.stop()
    assert [p for p in remote.rglob("*") if p.is_file()] == []
    assert log.counts() == {"ok": 3, "failed": 0, "pending": 0}, log.recent_failures()
