"""A face that could not be protected is never published: `lowkeyd cloak`, a real daemon, its API, `lowkeyd serve`.

The attack is made to fail the honest way, through the settings every user has: ``steps`` 0
(``--set steps=0``, ``attack: {steps: 0}``), so the face leaves the attack as it came in and every
ensemble member still matches it. Whatever policy later decides about faces that are past every
member's threshold but short of the preset's target, a face a member still matches is refused:
nothing of it reaches an output folder, the outbox, the publish hook or a response body, the
refusal says why, and the daemon gives up after its configured attempts.
"""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from daemon_fixtures import RunningDaemon, api_ready, face_photo, faceless_photo, job_result, stop_daemon, wait_until
from lowkeyd.cli.daemon import status_report

pytestmark = pytest.mark.slow

LOWKEYD = Path(sys.executable).parent / "lowkeyd"
NO_ATTACK = {"steps": 0}
START_TIMEOUT = 600  # model loading on a busy 2-core machine
PHOTO_SECONDS = 120  # one photo through the pipeline, on the same machine
MAX_ATTEMPTS = 2
# The pipeline's refusal, naming the members that still match (all four: nothing was changed).
REFUSAL = re.compile(r"a \d+ px face still matches its original for (sface|dlib|facenet_casia|keras_facenet)(, \w+)*; not published")
JPEG_START = b"\xff\xd8"


def files_under(folder: Path) -> set[str]:
    """Every file below ``folder`` (hidden and staging files too), relative to it."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


def private_dirs(base: Path) -> dict[str, str]:
    """State, config and runtime dirs of this test's own, so no other lowkeyd on the machine is seen or touched."""
    return {f"LOWKEYD_{name}_DIR": str(base / name.lower()) for name in ("STATE", "CONFIG", "RUNTIME")}


def lowkeyd(*args: str, env: dict[str, str], stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    # Wide enough that rich does not wrap a message inside the pattern looked for.
    env = {**env, "COLUMNS": "400"}
    return subprocess.run([str(LOWKEYD), *args], input=stdin, capture_output=True, timeout=START_TIMEOUT, env=env, check=False)


def assert_one_line_refusal(stderr: str, name: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert re.search(f"{re.escape(name)}: " + REFUSAL.pattern, stderr), stderr


def test_lowkeyd_cloak_writes_no_photo_whose_face_still_matches(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "face.jpg").write_bytes(face_photo(0))
    (tmp_path / "in" / "legs.jpg").write_bytes(faceless_photo(gps=False))
    env = {**os.environ, **private_dirs(tmp_path), "LOWKEYD_THREADS": "2"}

    done = lowkeyd("cloak", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--set", "steps=0", env=env)
    stderr = done.stderr.decode()
    assert done.returncode == 1, stderr
    assert_one_line_refusal(stderr, "face.jpg")
    # The photo without a face went through the same run: the output folder was writable, only the face was refused.
    assert files_under(tmp_path / "out") == {"in/legs.jpg"}
    assert "1 failed" in stderr

    piped = lowkeyd("cloak", "-", "-o", "-", "--set", "steps=0", env=env, stdin=face_photo(0))
    assert piped.returncode == 1 and piped.stdout == b"", "nothing of the photo on stdout"
    assert_one_line_refusal(piped.stderr.decode(), "<input>")
    assert piped.stderr.decode().startswith("lowkeyd: error: ")


# --- a real daemon -----------------------------------------------------------------------------------------


class Daemon(RunningDaemon):
    @property
    def out(self) -> Path:
        return self.base / "out"

    @property
    def published_calls(self) -> list[str]:
        calls = self.base / "hook-calls"
        return calls.read_text().splitlines() if calls.exists() else []

    @property
    def socket_path(self) -> Path:
        return self.base / "runtime" / "api.sock"

    def api(self) -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket_path)), base_url="http://lowkeyd", timeout=PHOTO_SECONDS)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    base = tmp_path_factory.mktemp("fail-closed")
    for folder in ("src", "exports"):
        (base / folder).mkdir()
    hook = base / "hook"
    # Records every photo handed on: a refused one must never be.
    hook.write_text(f'#!/bin/sh\necho "$LOWKEYD_OUTPUT_REL" >> "{base / "hook-calls"}"\n')
    hook.chmod(0o755)
    config = {
        "sources": [{"path": str(base / "src"), "name": "cam"}],
        "outbox": str(base / "out"),
        "attack": NO_ATTACK,
        "notifications": {"enabled": False},
        "work": {"nice": 0, "idle_priority": False, "batch_size": 1, "queue_size": 4},
        "watch": {"settle_seconds": 1, "rescan_interval": 0},
        "retry": {"max_attempts": MAX_ATTEMPTS, "backoff_seconds": 1},
        "api": {"job_roots": [{"path": str(base / "exports"), "name": "exports"}]},
        "on_published": {"command": [str(hook)], "timeout": 30},
    }
    yield from running_daemon(base, config)


def running_daemon(base: Path, config: dict) -> Iterator[Daemon]:
    """A real ``lowkeyd run`` on ``config`` with its state in ``base``, its API up; stopped afterwards."""
    (base / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.MonkeyPatch.context() as patch:
        # The in-process status reader and the clients started here look where the daemon keeps its state.
        for name, value in private_dirs(base).items():
            patch.setenv(name, value)
        patch.delenv("LOWKEYD_URL", raising=False)
        env = {k: v for k, v in os.environ.items() if k not in ("DBUS_SESSION_BUS_ADDRESS", "NOTIFY_SOCKET")}
        env["LOWKEYD_THREADS"] = "2"
        with (base / "daemon.log").open("ab") as log:
            process = subprocess.Popen(
                [str(LOWKEYD), "run", "--config", str(base / "config.yaml")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
            )
        running = Daemon(base, process, env)
        try:
            running.wait_for(lambda: api_ready(running.socket_path), START_TIMEOUT, "the API")
            yield running
        finally:
            stop_daemon(process)


def _row(name: str) -> dict | None:
    return next((e for e in status_report()["recent_errors"] if e["path"] == name), None)


def test_a_watched_photo_fails_after_its_attempts_and_nothing_is_published(daemon: Daemon) -> None:
    (daemon.base / "src" / "face.jpg").write_bytes(face_photo(1))
    daemon.wait_for(lambda: (_row("face.jpg") or {}).get("status") == "failed", MAX_ATTEMPTS * PHOTO_SECONDS, "face.jpg failed")
    row = _row("face.jpg")
    assert row is not None and row["attempts"] == MAX_ATTEMPTS and row["next_attempt"] is None
    assert REFUSAL.search(row["error"]), row["error"]

    # A faceless photo behind it is published: the outbox and the hook work, only the face was held back.
    # By the time it is done, a third attempt at face.jpg (its back-off is 1 s, then 2 s) would have shown.
    (daemon.base / "src" / "legs.jpg").write_bytes(faceless_photo(gps=False))
    daemon.wait_for(lambda: "cam/legs.jpg" in daemon.published_calls, PHOTO_SECONDS, "legs.jpg handed on")
    assert files_under(daemon.out) == {"cam/legs.jpg"}
    assert daemon.published_calls == ["cam/legs.jpg"]
    assert files_under(daemon.base / "state" / "staging") == set()
    assert _row("face.jpg") == row, "no attempt after the last"
    attempts = [line for line in daemon.log().splitlines() if "cam/face.jpg" in line and ("retrying" in line or "giving up" in line)]
    assert len(attempts) == MAX_ATTEMPTS and "failed 2 time(s), giving up: " in attempts[-1], attempts

    # What `lowkeyd status` shows the user: the photo, its attempts, that it gave up, and why.
    status = lowkeyd("status", env=daemon.env)
    assert status.returncode == 0, status.stderr
    line = next(x for x in status.stdout.decode().splitlines() if "cam/face.jpg" in x)
    assert "(2 attempt(s), gave up): " in line and REFUSAL.search(line), line


def test_the_api_answers_422_with_the_reason_and_no_photo(daemon: Daemon) -> None:
    before = files_under(daemon.out)
    with daemon.api() as api:
        response = api.post("/v1/cloak", content=face_photo(2))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert JPEG_START not in response.content
    assert REFUSAL.search(response.json()["error"]), response.text
    assert files_under(daemon.out) == before


def test_an_api_job_fails_once_with_the_reason_and_nothing_reaches_the_outbox(daemon: Daemon) -> None:
    before, handed_on = files_under(daemon.out), daemon.published_calls
    photo = daemon.base / "exports" / "album.jpg"
    photo.write_bytes(face_photo(3))
    with daemon.api() as api:
        job = job_result(api, photo, daemon.wait_for, PHOTO_SECONDS)
    assert job["status"] == "failed" and job["output"] is None, job
    assert REFUSAL.search(job["error"]), job
    assert files_under(daemon.out) == before and daemon.published_calls == handed_on
    assert daemon.log().count(f"({photo}) failed: ") == 1, "a job is not retried"


def test_lowkeyd_cloak_through_the_daemon_writes_nothing(daemon: Daemon, tmp_path: Path) -> None:
    photo = tmp_path / "phone.jpg"
    photo.write_bytes(face_photo(4))
    done = lowkeyd("cloak", str(photo), "-o", str(tmp_path / "out"), env=daemon.env)
    stderr = done.stderr.decode()
    assert "using the running daemon" in stderr
    assert done.returncode == 1, stderr
    assert "Traceback" not in stderr and REFUSAL.search(stderr), stderr
    assert files_under(tmp_path / "out") == set()


# --- lowkeyd serve, on a real local Ray ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray Serve is not installed (pip install 'lowkeyd[cluster]')")
def test_lowkeyd_serve_answers_422_and_publishes_nothing(tmp_path: Path) -> None:
    token = secrets.token_urlsafe(32)
    (tmp_path / "token").write_text(token)
    (tmp_path / "token").chmod(0o600)
    (tmp_path / "uploads").mkdir()
    photo = tmp_path / "uploads" / "face.jpg"
    photo.write_bytes(face_photo(5))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, **private_dirs(tmp_path), "LOWKEYD_THREADS": "1", "OMP_NUM_THREADS": "1"}
    env.pop("LOWKEYD_API_TOKEN", None)
    args = [
        "serve", "--set", "steps=0", "--port", str(port), "--token-file", str(tmp_path / "token"), "--num-cpus", "2",
        "--replicas", "1", "--threads", "1", "--gpus", "no", "--outbox", str(tmp_path / "out"),
        "--job-root", f"uploads={tmp_path / 'uploads'}",
    ]
    with (tmp_path / "serve.log").open("ab") as log:
        process = subprocess.Popen([str(LOWKEYD), *args], stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
    auth = {"Authorization": f"Bearer {token}"}

    def serve_log() -> str:
        return (tmp_path / "serve.log").read_text(errors="replace")

    def up() -> bool:
        try:
            return httpx.get(f"{url}/v1/status", headers=auth, timeout=10).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, START_TIMEOUT, "lowkeyd serve", process, serve_log)
        response = httpx.post(f"{url}/v1/cloak", content=photo.read_bytes(), headers=auth, timeout=PHOTO_SECONDS)
        assert response.status_code == 422, response.text
        assert JPEG_START not in response.content and REFUSAL.search(response.json()["error"]), response.text

        with httpx.Client(base_url=url, headers=auth, timeout=30) as client:
            job = job_result(client, photo, lambda *wait: wait_until(*wait, process, serve_log), PHOTO_SECONDS)
        assert job["status"] == "failed" and REFUSAL.search(job["error"]), job
        assert files_under(tmp_path / "out") == set()
        # Not a lost replica: the engine's refusal is not sent again to another one.
        assert "sending the photo again" not in serve_log()
    finally:
        # SIGTERM: `lowkeyd serve` shuts Serve and the Ray instance it started down before it exits.
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)
    assert process.returncode == 0, serve_log()[-4000:]
