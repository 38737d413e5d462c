"""``lowkeyd serve`` on a real local Ray instance, and clients offloading to it.

The service runs once per module (Ray and two CPU model replicas take a minute to start
on a 2-core machine) with a three-step attack; the tests talk to it over real HTTP, kill a
real replica process, and run a real daemon process with ``remote:``. Without Ray they
skip; what must work without Ray (the CLI, the daemon) is checked here too.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from daemon_fixtures import FAST_ATTACK, face_photo, stop_daemon, wait_until

from lowkeyd.daemon.api.client import DaemonClient
from lowkeyd.daemon.config import parse_config
from lowkeyd.errors import ConfigError
from lowkeyd.photo import read_photo

# Ray Serve's own configuration models use a pydantic feature pydantic deprecates: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Using extra keyword arguments on `Field`:DeprecationWarning")
needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="Ray Serve is not installed (pip install 'lowkeyd[cluster]')"
)
TOKEN = "cluster-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_UPLOAD = 2 * 1024 * 1024
# Per ingress replica: 2 photos at once plus 2 waiting, so a flood of 12 is mostly refused.
CONCURRENCY, QUEUE = 2, 2
NO_RAY = "import sys; sys.modules['ray'] = None\n"


def _run_without_ray(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", NO_RAY + code], capture_output=True, text=True, timeout=120)


# ---- without Ray


def test_the_cli_and_the_daemon_work_without_ray() -> None:
    done = _run_without_ray(
        "import lowkeyd.daemon.service, lowkeyd.daemon.remote, lowkeyd.cli.cloak\n"
        "from lowkeyd.cli import main\n"
        "sys.exit(main(['cloak', '--help']))"
    )
    assert done.returncode == 0, done.stderr
    serve = _run_without_ray("from lowkeyd.cli import main\nsys.exit(main(['serve']))")
    assert serve.returncode == 1
    assert serve.stderr.strip() == "lowkeyd: error: lowkeyd serve needs Ray Serve: pip install 'lowkeyd[cluster]'"


def test_the_remote_key_is_checked(tmp_path: Path) -> None:
    base = {"sources": [{"path": str(tmp_path)}], "outbox": str(tmp_path.parent / "out-remote")}
    config = parse_config({**base, "remote": {"url": "http://gpu-box:8000/", "fallback": "local"}}, base_dir=tmp_path,
                          origin="c.yaml")
    assert config.remote is not None and (config.remote.url, config.remote.fallback) == ("http://gpu-box:8000", "local")
    with pytest.raises(ConfigError, match=r"remote\.url: expected http://HOST:PORT"):
        parse_config({**base, "remote": {"url": "gpu-box:8000"}}, base_dir=tmp_path, origin="c.yaml")
    with pytest.raises(ConfigError, match=r"remote\.fallback"):
        parse_config({**base, "remote": {"url": "http://x", "fallback": "publish"}}, base_dir=tmp_path, origin="c.yaml")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cloak_remote_that_does_not_answer_is_one_clear_error(tmp_path: Path) -> None:
    photo = tmp_path / "a.jpg"
    photo.write_bytes(face_photo(0))
    env = {**os.environ, "LOWKEYD_API_TOKEN": TOKEN}
    done = subprocess.run(
        [sys.executable, "-m", "lowkeyd", "cloak", str(photo), "-o", str(tmp_path / "out"),
         "--remote", f"http://127.0.0.1:{_free_port()}"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("lowkeyd: error: no lowkeyd daemon answers on http://127.0.0.1:"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


# ---- the service on a real local Ray instance


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Storage the service and its clients share (a NAS): a job root and the outbox."""
    root = tmp_path_factory.mktemp("shared")
    (root / "uploads").mkdir()
    return root


@pytest.fixture(scope="module")
def service(shared: Path) -> Iterator[str]:
    pytest.importorskip("ray", reason="Ray Serve is not installed (pip install 'lowkeyd[cluster]')")
    from lowkeyd.cluster.run import start_service, stop_service
    from lowkeyd.cluster.settings import ServeSettings

    settings = ServeSettings(
        attack=FAST_ATTACK, replicas=2, threads=1, batch_size=4, concurrency=CONCURRENCY, queue_size=QUEUE,
        max_upload_bytes=MAX_UPLOAD, token=TOKEN, outbox=shared / "out", job_roots=(("uploads", shared / "uploads"),),
    )
    # Three logical CPUs: one per model replica, one to spare; everything else reserves none.
    url = start_service(settings, port=_free_port(), num_cpus=3,
                        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "LOWKEYD_THREADS": "1",
                                                  "LOWKEYD_STATE_DIR": str(shared / "state")}})
    try:
        yield url
    finally:
        stop_service()


@pytest.fixture(scope="module")
def local_output() -> dict[int, bytes]:
    """What the local pipeline makes of sample photos, with the same preset and seed."""
    from lowkeyd.engine.cloak import Cloaker
    from lowkeyd.pipeline import PhotoProtector

    protector = PhotoProtector(Cloaker("default", "cpu", **FAST_ATTACK))
    return {i: protector.protect_bytes(face_photo(i))[0] for i in (0, 1)}


def _cloak(url: str, data: bytes, **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/cloak", content=data, headers={**AUTH, **headers}, timeout=600)


def _assert_protected(response: httpx.Response, original: bytes) -> None:
    assert response.status_code == 200, response.text
    summary = json.loads(response.headers["X-Lowkeyd-Summary"])
    assert summary["status"] == "cloaked" and summary["faces_cloaked"] >= 1
    assert summary["protected_against"] and all(summary["protected_against"].values()), summary
    photo, source = read_photo(response.content), read_photo(original)
    assert photo.cloak_marker is not None and photo.format == source.format
    assert photo.rgb.shape == source.rgb.shape and (photo.rgb != source.rgb).any()


@pytest.mark.slow
@needs_ray
def test_concurrent_clients_are_all_answered_and_protected(service: str) -> None:
    photos = [face_photo(i) for i in range(2, 6)]
    # Two clients, two photos each: as many at once as one ingress replica takes, so none is refused.
    with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
        answers = list(pool.map(lambda data: _cloak(service, data), photos))
    for answer, original in zip(answers, photos, strict=True):
        _assert_protected(answer, original)
    status = httpx.get(f"{service}/v1/status", headers=AUTH).json()
    assert status["ready"] and status["service"]["model_replicas"] == 2 and status["queue"]["busy"] == 0


@pytest.mark.slow
@needs_ray
def test_the_answer_is_the_local_pipelines_byte_for_byte(service: str, local_output: dict[int, bytes]) -> None:
    # Sent alone, a photo is a batch of one: the same Cloaker.cloak_batch call as `lowkeyd cloak` makes.
    answer = _cloak(service, face_photo(0))
    _assert_protected(answer, face_photo(0))
    assert hashlib.sha256(answer.content).hexdigest() == hashlib.sha256(local_output[0]).hexdigest()


@pytest.mark.slow
@needs_ray
def test_a_job_on_shared_storage_is_published_into_the_outbox(
    service: str, shared: Path, local_output: dict[int, bytes]
) -> None:
    (shared / "uploads" / "day1").mkdir()
    (shared / "uploads" / "day1" / "a.jpg").write_bytes(face_photo(0))
    request = {"json": {"path": str(shared / "uploads" / "day1" / "a.jpg")}, "headers": {**AUTH, "Idempotency-Key": "job-a"}}
    created = httpx.post(f"{service}/v1/jobs", **request)
    assert created.status_code == 202, created.text
    job = created.json()
    retried = httpx.post(f"{service}/v1/jobs", **request)  # the client lost the answer: the same job, not a second
    assert (retried.status_code, retried.json()["id"]) == (202, job["id"])
    while job["status"] in ("queued", "running"):
        time.sleep(0.5)
        job = httpx.get(f"{service}{created.headers['Location']}", headers=AUTH).json()
    assert job["status"] == "done", job
    assert Path(job["output"]) == shared / "out" / "uploads" / "day1" / "a.jpg"
    assert Path(job["output"]).read_bytes() == local_output[0]
    outside = httpx.post(f"{service}/v1/jobs", json={"path": str(shared / "out" / "uploads" / "day1" / "a.jpg")},
                         headers=AUTH)
    assert outside.status_code == 403


@pytest.mark.slow
@needs_ray
def test_a_retried_upload_is_not_cloaked_twice(service: str, local_output: dict[int, bytes]) -> None:
    data, key = face_photo(1), f"retry-{time.time_ns()}"
    # The same upload twice at once (a client retrying while the first try still runs), then once more.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = list(pool.map(lambda _: _cloak(service, data, **{"Idempotency-Key": key}), range(2)))
    again = _cloak(service, data, **{"Idempotency-Key": key})
    for answer in (*first, again):
        assert answer.status_code == 200 and answer.content == local_output[1]
    assert sorted(a.headers.get("Idempotent-Replayed", "") for a in first) == ["", "true"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["X-Lowkeyd-Summary"] == first[0].headers["X-Lowkeyd-Summary"]


@pytest.mark.slow
@needs_ray
def test_bad_token_oversized_body_and_a_flood_behave_as_on_the_daemon(service: str) -> None:
    data = face_photo(3)
    missing = httpx.post(f"{service}/v1/cloak", content=data)
    wrong = httpx.post(f"{service}/v1/cloak", content=data, headers={"Authorization": "Bearer nope-nope-nope-nope"})
    assert (missing.status_code, missing.json()) == (401, {"error": "missing bearer token"})
    assert (wrong.status_code, wrong.json()) == (401, {"error": "wrong bearer token"})
    assert wrong.headers["WWW-Authenticate"] == 'Bearer realm="lowkeyd"'
    big = httpx.post(f"{service}/v1/cloak", content=b"\xff" * (MAX_UPLOAD + 1), headers=AUTH)
    assert big.status_code == 413 and "limit" in big.json()["error"]
    openapi = httpx.get(f"{service}/v1/openapi.json", headers=AUTH).json()
    assert openapi["components"]["securitySchemes"]
    flood = 12
    with concurrent.futures.ThreadPoolExecutor(flood) as pool:
        answers = list(pool.map(lambda i: _cloak(service, face_photo(6 + i)), range(flood)))
    refused = [a for a in answers if a.status_code == 429]
    assert len(refused) >= flood - CONCURRENCY - QUEUE
    assert all(a.headers["Retry-After"].isdigit() and "queue is full" in a.json()["error"] for a in refused)
    assert all(a.status_code in (200, 429) for a in answers), [a.status_code for a in answers]


def _replica_pids() -> set[int]:
    """This service's model replica processes, as they report themselves (the router picks one at random)."""
    from ray import serve

    from lowkeyd.cluster.app import APP_NAME

    model = serve.get_deployment_handle("CloakModel", APP_NAME)
    pids: set[int] = set()
    for _ in range(200):
        pids.add(model.describe.remote().result()["pid"])
        if len(pids) == 2:
            break
    return pids


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.slow
@needs_ray
def test_a_replica_killed_mid_request_is_retried_elsewhere_or_fails_cleanly(
    service: str, local_output: dict[int, bytes]
) -> None:
    pids = _replica_pids()
    assert len(pids) == 2, pids
    data = face_photo(0)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_cloak, service, data)
        busy = None
        while busy is None and not pending.done():
            before = {pid: _cpu_seconds(pid) for pid in pids}
            time.sleep(0.5)
            working = {pid: _cpu_seconds(pid) - t for pid, t in before.items()}
            pid, used = max(working.items(), key=lambda item: item[1])
            busy = pid if used > 0.3 else None  # attacking, not idling
        assert busy is not None, "the request finished before a replica could be seen working"
        os.kill(busy, signal.SIGKILL)
        answer = pending.result()
    if answer.status_code == 200:
        assert answer.content == local_output[0]  # done again, elsewhere, from the start
    else:
        assert answer.status_code == 503 and answer.headers["Retry-After"].isdigit(), answer.text
        assert "not cloaked" in answer.json()["error"]


# ---- a daemon offloading to the service


class _Forwarder:
    """A TCP port that forwards to the service once opened: the remote coming back on line."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port, self.target = port, target
        self._server: socket.socket | None = None

    def open(self) -> None:
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        assert self._server is not None
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while chunk := a.recv(65536):
                b.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


class _RemoteDaemon:
    """A real `lowkeyd run` process with ``remote:``, a watched folder and an outbox under ``root``."""

    def __init__(self, root: Path, remote: dict[str, object]) -> None:
        (root / "src").mkdir()
        (root / "token").write_text(TOKEN + "\n")
        config = {
            "sources": [{"path": str(root / "src"), "name": "cam"}],
            "outbox": str(root / "out"),
            "attack": FAST_ATTACK,  # what fallback: local runs; the service has its own
            "notifications": {"enabled": False},
            "work": {"nice": 0, "idle_priority": False},
            "watch": {"settle_seconds": 0.5},
            "remote": {"token_file": str(root / "token"), "retry_seconds": 1, **remote},
        }
        (root / "config.yaml").write_text(yaml.safe_dump(config))
        env = {k: v for k, v in os.environ.items() if k != "LOWKEYD_API_TOKEN"}
        env.update({f"LOWKEYD_{d}_DIR": str(root / d.lower()) for d in ("STATE", "CONFIG", "RUNTIME")})
        self.root, self.log_path = root, root / "daemon.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "lowkeyd", "run", "--config", str(root / "config.yaml")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        wait_until(condition, timeout, what, self.process, self.log)

    def drop_photo(self, name: str, data: bytes) -> Path:
        """Write a photo as a sync client does (a temporary name renamed into place); its outbox path."""
        (self.root / "src" / f"{name}.part").write_bytes(data)
        (self.root / "src" / f"{name}.part").rename(self.root / "src" / name)
        return self.root / "out" / "cam" / name


@pytest.mark.slow
@needs_ray
def test_a_daemon_with_remote_waits_while_it_is_down_then_publishes_through_it(
    service: str, local_output: dict[int, bytes], tmp_path: Path
) -> None:
    host, port = service.removeprefix("http://").split(":")
    forwarder = _Forwarder(_free_port(), (host, int(port)))
    daemon = _RemoteDaemon(tmp_path, {"url": f"http://127.0.0.1:{forwarder.port}"})
    try:
        daemon.wait_for(lambda: "ready:" in daemon.log(), 120, "the daemon to start")
        published = daemon.drop_photo("a.jpg", face_photo(0))
        daemon.wait_for(lambda: "photos wait for it" in daemon.log(), 120, "the daemon to wait for the remote")
        assert not published.exists() and not any((tmp_path / "out").rglob("*.jpg"))
        forwarder.open()
        daemon.wait_for(published.exists, 600, "the photo to be published through the service")
        assert published.read_bytes() == local_output[0]
        assert "answers again" in daemon.log()
        # The daemon's own API hands its requests on too.
        with DaemonClient(socket_path=tmp_path / "runtime" / "api.sock") as client:
            cloaked, summary = client.cloak_bytes(face_photo(1))
        assert cloaked == local_output[1] and summary["faces_cloaked"] == 1
    finally:
        stop_daemon(daemon.process)
        forwarder.close()


@pytest.mark.slow
def test_a_daemon_whose_remote_is_down_cloaks_locally_with_fallback_local(
    local_output: dict[int, bytes], tmp_path: Path
) -> None:
    daemon = _RemoteDaemon(tmp_path, {"url": f"http://127.0.0.1:{_free_port()}", "fallback": "local"})
    try:
        published = daemon.drop_photo("a.jpg", face_photo(0))
        daemon.wait_for(published.exists, 600, "the photo to be cloaked locally")
        assert published.read_bytes() == local_output[0]
        assert "cloaking here" in daemon.log()
    finally:
        stop_daemon(daemon.process)
