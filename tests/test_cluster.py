"""``lowkeyd serve`` on a real local Ray instance, and clients offloading to it.

The service runs once per module (Ray and two CPU model replicas take a minute to start
on a 2-core machine) with a three-step attack; the tests talk to it over real HTTP, kill a
real replica process, and run a real daemon process with ``remote:``. Without Ray they
skip; what must work without Ray (the CLI, the daemon) is checked here too.
"""

from __future__ import annotations

import collections
import concurrent.futures
import datetime
import hashlib
import importlib.util
import ipaddress
import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from daemon_fixtures import FAST_ATTACK, face_photo, stop_daemon, wait_until

from lowkeyd.daemon.config import parse_config
from lowkeyd.errors import ConfigError, LowkeydError
from lowkeyd.photo import read_photo
from lowkeyd.serving.api.client import DaemonClient

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
# The service's grace period on a stop: far longer than a three-step photo takes, however busy the machine.
GRACE = 300
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


@needs_ray
@pytest.mark.parametrize(("options", "error"), [
    (["--replicas", "0"], "--replicas: Input should be greater than or equal to 1"),
    (["--replicas", "2", "--max-replicas", "1"], "max_replicas must be at least replicas"),
    (["--set", "stepz=3"], "attack setting 'stepz': unknown setting"),
    (["--job-root", "uploads=/nonexistent/folder", "--outbox", "/tmp"],
     "--job-root: uploads=/nonexistent/folder: expected NAME=PATH of an existing folder"),
    (["--tls-cert", "cert.pem"], "--tls-cert and --tls-key go together"),
    (["--host", "0.0.0.0"], "--host 0.0.0.0 is reachable from other machines: use 127.0.0.1, or add --allow-remote"),
])
def test_serve_options_are_checked_before_ray_starts(options: list[str], error: str, capsys) -> None:
    from lowkeyd.cli import main

    assert main(["serve", *options]) != 0
    assert capsys.readouterr().err == f"lowkeyd: error: {error}\n"


def test_serve_args_resolve_the_protection_settings_the_replicas_are_sent() -> None:
    from lowkeyd.cluster.settings import ServeArgs
    from lowkeyd.engine.presets import get_preset
    from lowkeyd.settings import ProtectionSettings

    given = ServeArgs.parse({"preset": "strong", "set": "steps=3,flip=true", "keep_gps": True, "no_face": "skip"})
    assert given.settings(token=TOKEN, gpus=False).protection == ProtectionSettings(
        preset=get_preset("strong", steps=3, flip=True), device="cpu", strip_gps=False, no_face="skip"
    )
    assert given.settings(token=TOKEN, gpus=True).protection.device == "cuda"
    with pytest.raises(LowkeydError, match=r"^preset: unknown preset 'fast' \(choose from paper, default, strong\)$"):
        ServeArgs.parse({"preset": "fast"})


def test_remote_reads_the_default_token_file_and_never_creates_one(tmp_path: Path, monkeypatch) -> None:
    from lowkeyd.daemon.config import RemoteConfig
    from lowkeyd.daemon.remote import read_remote_token

    monkeypatch.setenv("LOWKEYD_CONFIG_DIR", str(tmp_path))
    monkeypatch.delenv("LOWKEYD_API_TOKEN", raising=False)
    config = RemoteConfig(url="https://gpu-box:8000")
    with pytest.raises(ConfigError, match=f"remote: no token: {tmp_path / 'api-token'} does not exist"):
        read_remote_token(config)
    assert not (tmp_path / "api-token").exists()
    (tmp_path / "api-token").write_text(TOKEN + "\n")
    assert read_remote_token(config) == TOKEN
    monkeypatch.setenv("LOWKEYD_API_TOKEN", "from-the-environment")
    assert read_remote_token(config) == "from-the-environment"


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


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost that signs itself (its own CA), and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lowkeyd test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return folder / "cert.pem", folder / "key.pem"


@pytest.fixture(scope="module")
def ray_head(shared: Path) -> Iterator[str]:
    """A local Ray instance, as ``ray.init()`` starts one (Ray's token authentication on); its GCS address."""
    ray = pytest.importorskip("ray", reason="Ray Serve is not installed (pip install 'lowkeyd[cluster]')")
    with pytest.MonkeyPatch.context() as env:
        # Replica processes inherit the raylet's environment: one thread each, state in the test's folder.
        env.setenv("OMP_NUM_THREADS", "1")
        env.setenv("LOWKEYD_THREADS", "1")
        env.setenv("LOWKEYD_STATE_DIR", str(shared / "state"))
        env.delenv("RAY_AUTH_MODE", raising=False)  # Ray's default for a new local instance: token authentication
        env.delenv("RAY_ADDRESS", raising=False)
        # Three logical CPUs: one per model replica, one to spare; everything else reserves none.
        ray.init(num_cpus=3, include_dashboard=False, logging_level=logging.WARNING)
        try:
            yield ray.get_runtime_context().gcs_address
        finally:
            ray.shutdown()


@dataclass
class Service:
    """``lowkeyd serve`` run from the command line on the test's Ray instance, over TLS."""

    url: str
    cert: Path
    process: subprocess.Popen
    log_path: Path
    config_dir: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers=AUTH, verify=_ssl(self.cert), timeout=600, **kwargs)

    def post(self, path: str, **kwargs: object) -> httpx.Response:
        headers = {**AUTH, **kwargs.pop("headers", {})}  # type: ignore[dict-item]
        return httpx.post(f"{self.url}{path}", headers=headers, verify=_ssl(self.cert), timeout=600, **kwargs)

    def cloak(self, data: bytes, **headers: str) -> httpx.Response:
        return self.post("/v1/cloak", content=data, headers=headers)


def _ssl(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def _cli_env(config_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LOWKEYD_API_TOKEN", "LOWKEYD_URL")}
    env["LOWKEYD_CONFIG_DIR"] = str(config_dir)
    return env


@pytest.fixture(scope="module")
def service(ray_head: str, shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    from ray import serve

    from lowkeyd.cluster.app import APP_NAME

    home = tmp_path_factory.mktemp("serve")
    cert, key = _self_signed(home)
    config_dir = home / "config"
    config_dir.mkdir()
    fd = os.open(config_dir / "api-token", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, f"{TOKEN}\n".encode())
    os.close(fd)
    port = _free_port()
    attack = [f"--set={k}={json.dumps(v)}" for k, v in FAST_ATTACK.items()]
    command = [
        sys.executable, "-m", "lowkeyd", "serve", "--address", ray_head, "--port", str(port),
        "--tls-cert", str(cert), "--tls-key", str(key), *attack, "--gpus", "no", "--replicas", "2", "--threads", "1",
        "--batch-size", "4", "--concurrency", str(CONCURRENCY), "--queue-size", str(QUEUE),
        "--max-upload-mb", str(MAX_UPLOAD / 1024 / 1024), "--grace", str(GRACE),
        "--outbox", str(shared / "out"), "--job-root", f"uploads={shared / 'uploads'}",
    ]
    log_path = home / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=_cli_env(config_dir))
    running = Service(f"https://127.0.0.1:{port}", cert, process, log_path, config_dir)
    try:
        wait_until(lambda: "lowkeyd: serving on" in running.log(), 600, "lowkeyd serve to start", process, running.log)
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(GRACE + 120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(30)
        if APP_NAME in serve.status().applications:
            serve.delete(APP_NAME)


@pytest.fixture(scope="module")
def local_output() -> Iterator[dict[int, bytes]]:
    """What the local pipeline makes of sample photos, with the same preset and seed, on one thread like the replicas."""
    import torch

    from lowkeyd.engine.cloak import Cloaker
    from lowkeyd.engine.presets import get_preset
    from lowkeyd.pipeline import PhotoProtector

    threads = torch.get_num_threads()
    try:
        protector = PhotoProtector(Cloaker(get_preset("default", **FAST_ATTACK), "cpu", threads=1))
        yield {i: protector.protect_bytes(face_photo(i))[0] for i in (0, 1)}
    finally:
        torch.set_num_threads(threads)


def _assert_protected(response: httpx.Response, original: bytes) -> None:
    assert response.status_code == 200, response.text
    summary = json.loads(response.headers["X-Lowkeyd-Summary"])
    assert summary["status"] == "cloaked" and summary["faces_cloaked"] >= 1
    assert summary["protected_against"] and all(summary["protected_against"].values()), summary
    photo, source = read_photo(response.content), read_photo(original)
    assert photo.cloak_marker is None and photo.format == source.format  # published copies carry no lowkeyd tag
    assert photo.rgb.shape == source.rgb.shape and (photo.rgb != source.rgb).any()


@pytest.mark.slow
@needs_ray
def test_concurrent_clients_are_all_answered_and_protected(service: Service) -> None:
    photos = [face_photo(i) for i in range(2, 6)]
    # Two clients, two photos each: as many at once as one ingress replica takes, so none is refused.
    with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
        answers = list(pool.map(service.cloak, photos))
    for answer, original in zip(answers, photos, strict=True):
        _assert_protected(answer, original)
    status = service.get("/v1/status").json()
    assert status["ready"] and status["service"]["model_replicas"] == 2 and status["queue"]["busy"] == 0


@pytest.mark.slow
@needs_ray
def test_the_answer_is_the_local_pipelines_byte_for_byte(service: Service, local_output: dict[int, bytes]) -> None:
    # Sent alone, a photo is a batch of one: the same Cloaker.cloak_batch call as `lowkeyd cloak` makes.
    answer = service.cloak(face_photo(0))
    _assert_protected(answer, face_photo(0))
    assert hashlib.sha256(answer.content).hexdigest() == hashlib.sha256(local_output[0]).hexdigest()


@pytest.mark.slow
@needs_ray
def test_a_job_on_shared_storage_is_published_into_the_outbox(
    service: Service, shared: Path, local_output: dict[int, bytes]
) -> None:
    (shared / "uploads" / "day1").mkdir()
    (shared / "uploads" / "day1" / "a.jpg").write_bytes(face_photo(0))
    request = {"json": {"path": str(shared / "uploads" / "day1" / "a.jpg")}, "headers": {"Idempotency-Key": "job-a"}}
    created = service.post("/v1/jobs", **request)
    assert created.status_code == 202, created.text
    job = created.json()
    retried = service.post("/v1/jobs", **request)  # the client lost the answer: the same job, not a second
    assert (retried.status_code, retried.json()["id"]) == (202, job["id"])
    while job["status"] in ("queued", "running"):
        time.sleep(0.5)
        job = service.get(created.headers["Location"]).json()
    assert job["status"] == "done", job
    assert Path(job["output"]) == shared / "out" / "uploads" / "day1" / "a.jpg"
    assert Path(job["output"]).read_bytes() == local_output[0]
    outside = service.post("/v1/jobs", json={"path": str(shared / "out" / "uploads" / "day1" / "a.jpg")})
    assert outside.status_code == 403


@pytest.mark.slow
@needs_ray
def test_a_retried_upload_is_not_cloaked_twice_and_its_key_is_bound_to_its_body(
    service: Service, local_output: dict[int, bytes]
) -> None:
    data, key = face_photo(1), f"retry-{time.time_ns()}"
    # The same upload twice at once (a client retrying while the first try still runs), then once more.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = list(pool.map(lambda _: service.cloak(data, **{"Idempotency-Key": key}), range(2)))
    again = service.cloak(data, **{"Idempotency-Key": key})
    for answer in (*first, again):
        assert answer.status_code == 200 and answer.content == local_output[1]
    assert sorted(a.headers.get("Idempotent-Replayed", "") for a in first) == ["", "true"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["X-Lowkeyd-Summary"] == first[0].headers["X-Lowkeyd-Summary"]
    # The same key with another photo: never the first photo's cloak.
    other = service.cloak(face_photo(0), **{"Idempotency-Key": key})
    assert other.status_code == 422 and "another request body" in other.json()["error"]


@pytest.mark.slow
@needs_ray
def test_bad_token_oversized_body_and_a_flood_behave_as_on_the_daemon(service: Service) -> None:
    data = face_photo(3)
    missing = httpx.post(f"{service.url}/v1/cloak", content=data, verify=_ssl(service.cert))
    wrong = httpx.post(f"{service.url}/v1/cloak", content=data, headers={"Authorization": "Bearer nope-nope-nope-nope"},
                       verify=_ssl(service.cert))
    assert (missing.status_code, missing.json()) == (401, {"error": "missing bearer token"})
    assert (wrong.status_code, wrong.json()) == (401, {"error": "wrong bearer token"})
    assert wrong.headers["WWW-Authenticate"] == 'Bearer realm="lowkeyd"'
    big = service.cloak(b"\xff" * (MAX_UPLOAD + 1))
    assert big.status_code == 413 and "limit" in big.json()["error"]
    openapi = service.get("/v1/openapi.json").json()
    assert openapi["components"]["securitySchemes"]
    flood = 12
    with concurrent.futures.ThreadPoolExecutor(flood) as pool:
        answers = list(pool.map(lambda i: service.cloak(face_photo(6 + i)), range(flood)))
    refused = [a for a in answers if a.status_code == 429]
    assert len(refused) >= flood - CONCURRENCY - QUEUE
    assert all(a.headers["Retry-After"].isdigit() and "queue is full" in a.json()["error"] for a in refused)
    assert all(a.status_code in (200, 429) for a in answers), [a.status_code for a in answers]


def _model() -> Any:
    from ray import serve

    from lowkeyd.cluster.app import APP_NAME

    return serve.get_deployment_handle("CloakModel", APP_NAME)


def _replicas(count: int = 2) -> dict[int, dict[str, Any]]:
    """What each model replica reports about itself, by pid (the router picks one at random per call)."""
    model = _model()
    seen: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + 300
    while len(seen) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"only {len(seen)} of {count} model replicas answered within 300 s")
        report = model.describe.remote().result()
        seen[report["pid"]] = report
    return seen


def _attacking(pending: concurrent.futures.Future[httpx.Response]) -> int:
    """The pid of the model replica that is attacking the photo of ``pending`` (asked until one says so)."""
    model = _model()
    deadline = time.monotonic() + 300
    while not pending.done() and time.monotonic() < deadline:
        report = model.describe.remote().result()
        if report["attacking"]:
            return report["pid"]
    pytest.fail("no model replica was seen attacking the photo" + (": it was answered first" if pending.done() else ""))


@pytest.mark.slow
@needs_ray
def test_serve_batch_puts_photos_of_concurrent_requests_in_one_batch(service: Service) -> None:
    """@serve.batch really gathers: photos sent at once reach a replica's cloak_batch together."""
    before = _replicas()
    photos = [(read_photo(face_photo(20 + i)).rgb, False) for i in range(5)]
    model = _model()
    # Five at once to two replicas: one gets at least three, and its second batch takes every photo that waited
    # while its first ran (each takes seconds), whatever the order of arrival.
    results = [response.result() for response in [model.cloak.remote(photo) for photo in photos]]
    assert all(r.cloaked >= 1 for r in results)
    after = _replicas()
    ran = collections.Counter[int]()
    for pid, report in after.items():
        ran.update({int(size): n - before.get(pid, {"batches": {}})["batches"].get(size, 0)
                    for size, n in report["batches"].items()})
    assert sum(size * n for size, n in ran.items()) == len(photos), ran
    assert max(size for size, n in ran.items() if n > 0) > 1, ran


@pytest.mark.slow
@needs_ray
def test_a_replica_killed_mid_request_is_sent_again_to_the_other(service: Service, local_output: dict[int, bytes]) -> None:
    resent = service.get("/v1/status").json()["service"]["photos_resent"]
    assert len(_replicas()) == 2
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(service.cloak, face_photo(0))
        os.kill(_attacking(pending), signal.SIGKILL)  # killed while it holds the photo: its answer can never come
        answer = pending.result()
    # Done again from the start on the other replica: the whole photo, the local pipeline's bytes.
    assert answer.status_code == 200, answer.text
    assert answer.content == local_output[0]
    assert service.get("/v1/status").json()["service"]["photos_resent"] == resent + 1


@pytest.mark.slow
@needs_ray
def test_tls_answers_and_plain_http_or_an_unknown_certificate_fail_cleanly(service: Service, tmp_path: Path) -> None:
    assert service.get("/v1/status").status_code == 200
    plain = service.url.replace("https://", "http://")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{plain}/v1/status", headers=AUTH, timeout=60)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{service.url}/v1/status", headers=AUTH, timeout=60)  # the system's CAs do not know it
    photo = tmp_path / "a.jpg"
    photo.write_bytes(face_photo(0))
    for url, extra in ((plain, ["--ca-file", str(service.cert)]), (service.url, [])):
        done = subprocess.run([sys.executable, "-m", "lowkeyd", "cloak", str(photo), "-o", str(tmp_path / "out"),
                               "--remote", url, *extra], capture_output=True, text=True, timeout=300,
                              env=_cli_env(service.config_dir))
        assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert done.stderr.startswith(f"lowkeyd: error: no lowkeyd daemon answers on {url}"), done.stderr
    assert not (tmp_path / "out").exists()
    assert service.get("/v1/status").status_code == 200  # still serving


@pytest.mark.slow
@needs_ray
def test_cloak_remote_finds_the_token_by_itself_and_checks_the_certificate(
    service: Service, local_output: dict[int, bytes], tmp_path: Path
) -> None:
    assert f"the token: {service.config_dir / 'api-token'}" in service.log()  # the start-up line names it
    photo = tmp_path / "a.jpg"
    photo.write_bytes(face_photo(0))
    # No --token-file and no $LOWKEYD_API_TOKEN: the same default file the service read.
    done = subprocess.run([sys.executable, "-m", "lowkeyd", "cloak", str(photo), "-o", str(tmp_path / "out"),
                           "--remote", service.url, "--ca-file", str(service.cert)],
                          capture_output=True, text=True, timeout=600, env=_cli_env(service.config_dir))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "a.jpg").read_bytes() == local_output[0]


@pytest.mark.slow
@needs_ray
def test_operators_list_the_replicas_through_ray_with_token_authentication_on(service: Service, ray_head: str) -> None:
    assert os.environ.get("RAY_AUTH_MODE") == "token"  # what ray.init() chose for the local instance
    listed = subprocess.run([sys.executable, "-m", "lowkeyd", "serve", "--list", "--address", ray_head],
                            capture_output=True, text=True, timeout=300, env=_cli_env(service.config_dir))
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    # The state as it is: after the kill above, a model replica may still be starting (the app UNHEALTHY).
    assert lines[0] in ("lowkeyd: RUNNING", "lowkeyd: UNHEALTHY", "lowkeyd: DEPLOYING"), listed.stdout
    deployments = {line.split(":")[0].strip(): line for line in lines[1:]}
    assert set(deployments) == {"Ingress", "CloakModel", "Ledger"}, listed.stdout
    assert deployments["Ingress"].endswith("replicas: 1 RUNNING"), listed.stdout
    assert "RUNNING" in deployments["CloakModel"] and "replicas: " in deployments["CloakModel"], listed.stdout
    # Without Ray's token, Ray refuses: the listing is for whoever holds it.
    refused = subprocess.run([sys.executable, "-m", "lowkeyd", "serve", "--list", "--address", ray_head],
                             capture_output=True, text=True, timeout=300,
                             env={**_cli_env(service.config_dir), "RAY_AUTH_TOKEN": "not-the-token"})
    assert refused.returncode == 1 and "lowkeyd: RUNNING" not in refused.stdout
    assert refused.stderr.strip().splitlines()[-1].startswith(f"lowkeyd: error: cannot reach the Ray cluster at {ray_head}")


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
    service: Service, local_output: dict[int, bytes], tmp_path: Path
) -> None:
    host, port = service.url.removeprefix("https://").split(":")
    forwarder = _Forwarder(_free_port(), (host, int(port)))
    daemon = _RemoteDaemon(tmp_path, {"url": f"https://127.0.0.1:{forwarder.port}", "ca_file": str(service.cert)})
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
        assert cloaked == local_output[1] and summary.faces_cloaked == 1
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


# ---- stopping: last, it stops the module's service


@pytest.fixture(scope="module")
def other_app(service: Service) -> str:
    """Someone else's Serve application on the same Ray instance and proxy."""
    from ray import serve

    class Other:
        async def __call__(self, request: object) -> str:
            return "someone else's app"

    serve.run(serve.deployment(Other, name="Other", ray_actor_options={"num_cpus": 0}).bind(), name="other",
              route_prefix="/other")
    return f"{service.url}/other"


@pytest.mark.slow
@needs_ray
def test_a_stop_refuses_new_work_lets_the_photo_in_flight_finish_and_deletes_only_lowkeyds_app(
    service: Service, other_app: str, shared: Path, local_output: dict[int, bytes]
) -> None:
    from ray import serve

    from lowkeyd.cluster.app import APP_NAME

    assert httpx.get(other_app, verify=_ssl(service.cert)).text == "someone else's app"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(service.cloak, face_photo(1))
        replica = _attacking(pending)
        # Held still while the stop is checked, so it cannot finish before: then let go, well within the grace.
        os.kill(replica, signal.SIGSTOP)
        try:
            service.process.send_signal(signal.SIGTERM)
            wait_until(lambda: service.get("/v1/status").status_code == 503, 120, "the service to refuse new requests",
                       service.process, service.log)
            refused = service.cloak(face_photo(0))
            assert refused.status_code == 503 and refused.headers["Retry-After"].isdigit()
            assert refused.json() == {"error": "lowkeyd is stopping; try again later"}
            assert not pending.done()
        finally:
            os.kill(replica, signal.SIGCONT)
        answer = pending.result()
    assert answer.status_code == 200 and answer.content == local_output[1]  # the whole photo, as alone
    assert service.process.wait(GRACE + 120) == 0, service.log()
    assert "lowkeyd: stopping" in service.log()
    assert APP_NAME not in serve.status().applications
    assert httpx.get(other_app, verify=_ssl(service.cert)).text == "someone else's app"
    # Nothing partial anywhere: the outbox holds only whole, published photos.
    for published in (shared / "out").rglob("*"):
        if published.is_file():
            assert read_photo(published).cloak_marker is None, published
