"""The local API and the publish hook on a real daemon: a `lowkeyd run` process with real models and a short attack.

One daemon serves the whole module (loading the models is the slow part). Its
publish hook is the rclone integration from service/rclone, with a stand-in
`rclone` first on the daemon's PATH that records its arguments (a real
process, run the way rclone would be); the pre-upload hook from service/hooks
and `lowkeyd cloak` run as real processes against the daemon too.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import piexif
import pytest
import yaml
from PIL import Image

from daemon_fixtures import (
    FAST_ATTACK,
    api_ready,
    assert_protected,
    face_photo,
    faceless_photo,
    job_result,
    stop_daemon,
    wait_until,
)
from lowkeyd.cli.daemon import status_report
from lowkeyd.serving.api.client import outcome_of
from lowkeyd.serving.api.wire import Summary
from lowkeyd.engine.presets import get_preset
from lowkeyd.engine.evaluate import Evaluator
from lowkeyd.photo import read_photo

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
RCLONE_HOOK = REPO / "service" / "rclone" / "lowkeyd-rclone-upload"
PRE_UPLOAD = REPO / "service" / "hooks" / "pre-upload"
LOWKEYD = Path(sys.executable).parent / "lowkeyd"
START_TIMEOUT = 600  # model loading on a busy 2-core machine
PHOTO_SECONDS = 120  # one photo through the daemon, on the same machine
QUEUE_SIZE = 4
UPLOAD_LIMIT_MB = 2

# Stands in for rclone on the daemon's PATH: records each call, one line of tab-separated
# arguments, and refuses files whose name says so, as a full remote would.
FAKE_RCLONE = """#!/bin/sh
printf '%s\\t' "$@" >> "$RCLONE_CALLS"
printf '\\n' >> "$RCLONE_CALLS"
case "$3" in
    *refused*) echo "rclone: quota exceeded" >&2; exit 1 ;;
esac
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningDaemon:
    base: Path
    process: subprocess.Popen[bytes]
    socket_path: Path
    url: str
    token: str
    rclone_calls: Path

    @property
    def src(self) -> Path:
        return self.base / "src"

    @property
    def out(self) -> Path:
        return self.base / "out"

    @property
    def exports(self) -> Path:
        return self.base / "exports"

    def log(self) -> str:
        return (self.base / "daemon.log").read_text(errors="replace")

    def unix(self, timeout: float = PHOTO_SECONDS) -> httpx.Client:
        return httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.socket_path)), base_url="http://lowkeyd", timeout=timeout
        )

    def tcp(self, token: str | None = None, timeout: float = PHOTO_SECONDS) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        wait_until(condition, timeout, what, self.process, self.log)

    def uploads(self) -> list[list[str]]:
        if not self.rclone_calls.exists():
            return []
        return [line.rstrip("\t").split("\t") for line in self.rclone_calls.read_text().splitlines()]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    base = tmp_path_factory.mktemp("api")
    for folder in ("src", "exports/album", "bin"):
        (base / folder).mkdir(parents=True)
    rclone = base / "bin" / "rclone"
    rclone.write_text(FAKE_RCLONE)
    rclone.chmod(0o755)
    token = secrets.token_urlsafe(32)
    token_file = base / "api-token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    port = free_port()
    config = {
        "sources": [{"path": str(base / "src"), "name": "cam"}],
        "outbox": str(base / "out"),
        "attack": FAST_ATTACK,
        "notifications": {"enabled": False},
        # Test daemons must not be starved by everything else running on the machine.
        "work": {"nice": 0, "idle_priority": False, "batch_size": 1, "queue_size": QUEUE_SIZE},
        "watch": {"settle_seconds": 1, "rescan_interval": 0},
        "api": {
            "tcp": {"port": port, "token_file": str(token_file)},
            "max_upload_mb": UPLOAD_LIMIT_MB,
            "job_roots": [{"path": str(base / "exports"), "name": "exports"}],
        },
        "on_published": {"command": [str(RCLONE_HOOK), "remote:Photos"], "timeout": 30},
    }
    (base / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.MonkeyPatch.context() as env:
        # Shared by the daemon, the clients started here and the in-process status reader.
        for name in ("STATE", "CONFIG", "RUNTIME"):
            env.setenv(f"LOWKEYD_{name}_DIR", str(base / name.lower()))
        env.delenv("LOWKEYD_URL", raising=False)
        env.delenv("LOWKEYD_API_TOKEN", raising=False)
        daemon_env = {
            **{k: v for k, v in os.environ.items() if k not in ("DBUS_SESSION_BUS_ADDRESS", "NOTIFY_SOCKET")},
            "PATH": f"{base / 'bin'}{os.pathsep}{os.environ['PATH']}",
            "RCLONE_CALLS": str(base / "rclone-calls"),
            "LOWKEYD_THREADS": "2",
        }
        with (base / "daemon.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "lowkeyd", "run", "--config", str(base / "config.yaml")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=daemon_env,
            )
        running = RunningDaemon(
            base, process, base / "runtime" / "api.sock", f"http://127.0.0.1:{port}", token, base / "rclone-calls"
        )
        try:
            running.wait_for(lambda: api_ready(running.socket_path), START_TIMEOUT, "the API")
            yield running
        finally:
            stop_daemon(process)


@pytest.fixture(scope="module")
def evaluator() -> Evaluator:

    return Evaluator.load("cpu")


def camera_jpeg() -> bytes:
    """A face photo as a camera writes it: EXIF with make, model, time and a GPS position."""
    exif = piexif.dump(
        {
            "0th": {piexif.ImageIFD.Make: b"Canon", piexif.ImageIFD.Model: b"EOS R6"},
            "Exif": {piexif.ExifIFD.DateTimeOriginal: b"2024:05:01 10:00:00"},
            "GPS": {piexif.GPSIFD.GPSLatitudeRef: b"N", piexif.GPSIFD.GPSLatitude: ((38, 1), (53, 1), (23, 1))},
        }
    )
    with Image.open(io.BytesIO(face_photo(2))) as im:
        out = io.BytesIO()
        im.save(out, "JPEG", quality=92, exif=exif)
    return out.getvalue()


def gif_bytes() -> bytes:
    with Image.open(io.BytesIO(face_photo(0))) as im:
        out = io.BytesIO()
        im.save(out, "GIF")
    return out.getvalue()


def files_outside_outbox(base: Path) -> dict[str, float]:
    """Every file the daemon may not write to, with its mtime."""
    mine = ("out", "state", "runtime", "daemon.log", "rclone-calls")
    return {
        str(p): p.stat().st_mtime for p in base.rglob("*") if p.is_file() and p.relative_to(base).parts[0] not in mine
    }


def test_cloak_over_the_socket_returns_the_photo_protected_with_its_exif(
    daemon: RunningDaemon, evaluator: Evaluator
) -> None:
    original = camera_jpeg()
    with daemon.unix() as client:
        response = client.post("/v1/cloak", content=original, headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    summary = json.loads(response.headers["X-Lowkeyd-Summary"])
    assert summary["status"] == "cloaked" and summary["faces_cloaked"] == 1
    assert summary["preset"].startswith("default(")
    assert summary["protected_against"] and all(summary["protected_against"].values()), summary
    [face] = summary["faces"]
    assert all(face["similarity"][m] < face["thresholds"][m] for m in face["similarity"])
    # The settings that ran, the config's attack: overrides applied to the named preset; the client validates them.
    ran = outcome_of(Summary.model_validate_json(response.headers["X-Lowkeyd-Summary"]), None).preset
    assert ran == get_preset("default", **FAST_ATTACK)

    cloaked = daemon.base / "cloaked.jpg"
    cloaked.write_bytes(response.content)
    assert_protected(evaluator, original, cloaked)
    exif = piexif.load(response.content)
    assert exif["0th"][piexif.ImageIFD.Make] == b"Canon"
    assert exif["0th"][piexif.ImageIFD.Model] == b"EOS R6"
    assert exif["Exif"][piexif.ExifIFD.DateTimeOriginal] == b"2024:05:01 10:00:00"
    assert not exif["GPS"], "strip_gps is on by default"


def test_lowkeyd_cloak_uses_the_daemon_and_the_pre_upload_hook_works(daemon: RunningDaemon, tmp_path: Path) -> None:
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(camera_jpeg())
    overrides = [f"--set={k}={v}" for k, v in FAST_ATTACK.items()]
    env = {**os.environ, "LOWKEYD_THREADS": "2"}
    times = {}
    for name, extra in (("with the daemon", []), ("without (--no-daemon)", ["--no-daemon", *overrides])):
        start = time.perf_counter()
        done = subprocess.run(
            [str(LOWKEYD), "cloak", str(photo), "-o", str(tmp_path / name), *extra],
            capture_output=True, text=True, timeout=START_TIMEOUT, env=env,
        )
        times[name] = time.perf_counter() - start
        assert done.returncode == 0, done.stderr
        assert ("using the running daemon" in done.stderr) == (name == "with the daemon")
        assert read_photo(tmp_path / name / "photo.jpg").cloak_marker is None  # untagged, either way
    print("\nlowkeyd cloak, one photo: " + ", ".join(f"{name} {s:.1f} s" for name, s in times.items()))
    # The daemon's way in to the engine and the command line's are one: same photo, settings, seed and threads, same bytes.
    assert (tmp_path / "with the daemon" / "photo.jpg").read_bytes() == (
        tmp_path / "without (--no-daemon)" / "photo.jpg"
    ).read_bytes()

    hook = subprocess.run(
        [str(PRE_UPLOAD)], input=photo.read_bytes(), capture_output=True, timeout=PHOTO_SECONDS,
        env={**env, "LOWKEYD": str(LOWKEYD)},
    )
    assert hook.returncode == 0, hook.stderr
    assert b"using the running daemon" in hook.stderr
    assert read_photo(hook.stdout).cloak_marker is None
    refused = subprocess.run(
        [str(PRE_UPLOAD)], input=b"not a photo", capture_output=True, timeout=PHOTO_SECONDS,
        env={**env, "LOWKEYD": str(LOWKEYD)},
    )
    assert refused.returncode != 0 and refused.stdout == b"" and b"not a readable image" in refused.stderr


def test_a_flood_of_requests_gets_answers_or_retry_after_none_lost(daemon: RunningDaemon) -> None:
    photo = face_photo(1)
    answers: list[httpx.Response | BaseException] = []
    lock = threading.Lock()
    go = threading.Barrier(50)

    def send() -> None:
        go.wait()
        try:
            with daemon.unix(timeout=PHOTO_SECONDS * (QUEUE_SIZE + 2)) as client:
                response = client.post("/v1/cloak", content=photo)
        except BaseException as exc:  # a lost request is what this test looks for
            response = exc
        with lock:
            answers.append(response)

    threads = [threading.Thread(target=send) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lost = [a for a in answers if isinstance(a, BaseException)]
    assert not lost, lost[:3]
    statuses = Counter(a.status_code for a in answers)
    print(f"\n50 concurrent requests, queue of {QUEUE_SIZE}: {dict(statuses)}")
    assert len(answers) == 50 and set(statuses) <= {200, 429, 503}, statuses
    assert statuses[200] >= 1 and statuses[429] >= 1, statuses
    for answer in answers:
        if answer.status_code == 200:
            assert read_photo(answer.content).cloak_marker is None
            assert "cloaked" in answer.headers["X-Lowkeyd-Summary"]
        else:
            assert int(answer.headers["Retry-After"]) >= 1
            assert answer.json()["error"]
    with daemon.unix() as client:
        assert client.get("/v1/status").json()["ready"] is True


def test_bad_requests_get_their_errors_and_the_daemon_keeps_serving(daemon: RunningDaemon, tmp_path: Path) -> None:
    before = files_outside_outbox(daemon.base)
    limit = UPLOAD_LIMIT_MB * 1024 * 1024
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(face_photo(0))
    (daemon.exports / "link.jpg").symlink_to(outside)
    with daemon.unix() as client:
        assert client.post("/v1/cloak", content=b"\xff\xd8" + os.urandom(limit)).status_code == 413
        not_image = client.post("/v1/cloak", content=b"plain text, not an image at all")
        assert not_image.status_code == 415 and "not a readable image" in not_image.json()["error"]
        gif = client.post("/v1/cloak", content=gif_bytes())
        assert gif.status_code == 415 and "a GIF, which lowkeyd does not cloak" in gif.json()["error"]
        assert client.post("/v1/jobs", json={"path": str(outside)}).status_code == 403
        assert client.post("/v1/jobs", json={"path": str(daemon.exports / "link.jpg")}).status_code == 403
        assert client.post("/v1/jobs", json={"path": str(daemon.src / ".." / "api-token")}).status_code == 403
        assert client.post("/v1/cloak?timeout=0.05", content=face_photo(0)).status_code == 504
    with daemon.tcp(token="") as anonymous:
        del anonymous.headers["Authorization"]
        assert anonymous.get("/v1/status").status_code == 401
    with daemon.tcp(token="wrong-" + daemon.token) as wrong:
        assert wrong.post("/v1/cloak", content=face_photo(0)).status_code == 401
    with daemon.tcp() as right:
        assert right.get("/v1/status").json()["ready"] is True
    (daemon.exports / "link.jpg").unlink()
    assert files_outside_outbox(daemon.base) == before


def test_jobs_and_watched_photos_are_published_and_handed_on_once_each(
    daemon: RunningDaemon, evaluator: Evaluator
) -> None:
    exported = daemon.exports / "album" / "portrait.jpg"
    exported.write_bytes(face_photo(0))
    with daemon.unix() as client:
        job = job_result(client, exported, daemon.wait_for, PHOTO_SECONDS * 2)
    assert job["status"] == "done", job
    assert job["output"] == str(daemon.out / "exports" / "album" / "portrait.jpg")
    assert_protected(evaluator, exported.read_bytes(), Path(job["output"]))

    # Watched photos: one with a face, one without (published as a sanitised copy), one the remote refuses.
    (daemon.src / "2024").mkdir()
    (daemon.src / "2024" / "face.jpg").write_bytes(face_photo(2))
    (daemon.src / "2024" / "landscape.jpg").write_bytes(faceless_photo(gps=True))
    (daemon.src / "refused.jpg").write_bytes(faceless_photo(gps=False))
    # Each upload goes to a hidden temporary name, then is renamed into place; the refused one stops at the first.
    expected = []
    for rel in ("cam/2024/face.jpg", "cam/2024/landscape.jpg", "cam/refused.jpg", "exports/album/portrait.jpg"):
        folder, name = rel.rsplit("/", 1)
        partial = f"remote:Photos/{folder}/.{name}.lowkeyd-partial"
        expected.append(["copyto", "--no-traverse", str(daemon.out / rel), partial])
        if "refused" not in rel:
            expected.append(["moveto", "--no-traverse", partial, f"remote:Photos/{rel}"])
    daemon.wait_for(lambda: len(daemon.uploads()) >= len(expected), PHOTO_SECONDS * 4, "the uploads")
    time.sleep(3)  # anything run twice would show up now
    assert sorted(daemon.uploads()) == sorted(expected)

    report = status_report()
    assert report["hooks"]["counts"] == {"ok": 3, "failed": 1, "pending": 0}
    [failure] = report["hooks"]["recent_failures"]
    assert failure["output"] == str(daemon.out / "cam" / "refused.jpg")
    assert failure["error"] == "exit status 1: rclone: quota exceeded"
    shown = subprocess.run([str(LOWKEYD), "status"], capture_output=True, text=True, timeout=60)
    assert "publish hook: 3 ok, 1 failed" in shown.stdout, shown.stdout
    assert "rclone: quota exceeded" in shown.stdout


# 503 and 504 are the API's own documented answers (loading or stopping, a request past its timeout:
# a client may ask for timeout=1e-300), not server errors; anything else 5xx is. Schema-valid is not
# request-valid here, so positive_data_acceptance is off: random bytes are not a photo (415), a random
# path is under no job root (403), a random id names no job (404).
SCHEMATHESIS_CONFIG = """
[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "503", "504"]

[checks.positive_data_acceptance]
enabled = false
"""


def test_the_api_keeps_to_its_openapi_description(daemon: RunningDaemon, tmp_path: Path) -> None:
    """schemathesis, run as its users run it, against the TCP port: no server error, every answer as described."""
    (tmp_path / "schemathesis.toml").write_text(SCHEMATHESIS_CONFIG)
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "--config-file", str(tmp_path / "schemathesis.toml"),
            "run", f"{daemon.url}/v1/openapi.json",
            "--header", f"Authorization: Bearer {daemon.token}",
            "--max-examples", "50",
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=1200,
    )
    print(done.stdout[-1500:])
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
    with daemon.unix() as client:
        assert client.get("/v1/status").json()["ready"] is True
