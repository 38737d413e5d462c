"""The local API's listeners and the refusals it makes before any model is involved.

The server here is the real one (uvicorn on a real Unix socket and a real
loopback port) in front of a worker whose models have not been loaded, which
is what a daemon looks like while it starts: every request that would need the
models is answered 503, and everything refused earlier (size, token, paths)
must be refused all the same. Cloaking itself is tested with a real daemon in
test_api_daemon.py.
"""

from __future__ import annotations

import http.server
import json
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from lowkeyd.engine.presets import PRESETS, Preset
from lowkeyd.errors import ConfigError, LowkeydError
from lowkeyd.pipeline import Outcome
from lowkeyd.serving.api.client import DaemonClient, DaemonUnavailable, find_daemon, outcome_of
from lowkeyd.serving.api.routes import JobRoot, LocalApi, summarise
from lowkeyd.serving.api.server import ApiError, ApiServer, TcpListener, bind_unix_socket, load_token
from lowkeyd.serving.api.wire import SUMMARY_HEADER, Summary
from lowkeyd.serving.outbox import Outbox
from lowkeyd.serving.worker import Worker

TOKEN = "a-test-token-that-is-long-enough"
LIMIT = 100_000


def _never_loaded() -> object:
    raise AssertionError("these tests never load the models")


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("STATE", "CONFIG", "RUNTIME"):
        monkeypatch.setenv(f"LOWKEYD_{name}_DIR", str(tmp_path / name.lower()))
    monkeypatch.delenv("LOWKEYD_URL", raising=False)
    monkeypatch.delenv("LOWKEYD_API_TOKEN", raising=False)
    root = tmp_path / "exports"
    (root / "album").mkdir(parents=True)
    (root / "album" / "photo.jpg").write_bytes(b"\xff\xd8 a photo by its name only")
    (root / "notes.txt").write_text("not a photo")
    (tmp_path / "private.jpg").write_bytes(b"\xff\xd8 outside every root")
    (root / "escape.jpg").symlink_to(tmp_path / "private.jpg")
    return tmp_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(dirs: Path) -> Iterator[ApiServer]:
    worker = Worker(_never_loaded, queue_size=4, batch_size=1)
    api = LocalApi(
        worker,
        Outbox(dirs / "out"),
        queue_size=4,
        roots=[JobRoot("exports", (dirs / "exports").resolve())],
        max_upload_bytes=LIMIT,
        timeout=30,
        preset=PRESETS["default"].model_copy(update={"name": "default(steps=3)", "steps": 3}),
    )
    server = ApiServer(api, socket_path=dirs / "runtime" / "api.sock", tcp=TcpListener("127.0.0.1", free_port(), TOKEN))
    server.start()
    yield server
    server.stop()


def unix_client(server: ApiServer) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(server.socket_path)), base_url="http://lowkeyd")


def tcp_url(server: ApiServer) -> str:
    assert server.tcp_address is not None
    return "http://{}:{}".format(*server.tcp_address)


def test_the_socket_is_for_its_user_only_and_removed_on_stop(server: ApiServer) -> None:
    path = server.socket_path
    assert path is not None
    assert stat.S_ISSOCK(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    server.stop()
    assert not path.exists()


def test_a_second_server_on_a_live_socket_is_refused(server: ApiServer) -> None:
    assert server.socket_path is not None
    with pytest.raises(ApiError, match="already serves"):
        bind_unix_socket(server.socket_path)


def test_a_stale_socket_file_is_replaced(dirs: Path) -> None:
    path = dirs / "runtime" / "api.sock"
    path.parent.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # what a killed daemon leaves: the file, nobody listening
    sock = bind_unix_socket(path)
    sock.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_tcp_needs_the_token(server: ApiServer) -> None:
    url = tcp_url(server)
    missing = httpx.get(f"{url}/v1/status")
    assert missing.status_code == 401
    assert missing.json() == {"error": "missing bearer token"}
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = httpx.get(f"{url}/v1/status", headers={"Authorization": f"Bearer {TOKEN}x"})
    assert (wrong.status_code, wrong.json()) == (401, {"error": "wrong bearer token"})
    assert httpx.post(f"{url}/v1/cloak", content=b"x" * 10).status_code == 401
    right = httpx.get(f"{url}/v1/status", headers={"Authorization": f"Bearer {TOKEN}"})
    assert right.status_code == 200
    assert httpx.get(f"{url}/v1/status", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200
    assert httpx.get(f"{url}/v1/status", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    # Still loading its models, the daemon already says which preset they will run (its config's).
    assert right.json()["ready"] is False and right.json()["preset"] == "default(steps=3)"
    assert right.json()["preset_settings"]["steps"] == 3, "and every setting of it: a remote daemon describes its output by them"
    # The socket needs none: its file permissions are the access control.
    assert unix_client(server).get("/v1/status").status_code == 200


def test_oversized_and_empty_bodies_are_refused(server: ApiServer) -> None:
    client = unix_client(server)
    big = client.post("/v1/cloak", content=b"\xff" * (LIMIT + 1))
    assert big.status_code == 413
    assert str(LIMIT) in big.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while reading
        for _ in range(LIMIT // 10_000 + 2):
            yield b"\xff" * 10_000

    assert client.post("/v1/cloak", content=chunks()).status_code == 413
    assert client.post("/v1/cloak", content=b"").status_code == 400
    assert client.post("/v1/cloak?timeout=-1", content=b"x").status_code == 400
    assert client.post("/v1/cloak?timeout=31", content=b"x").status_code == 400
    # Acceptable in every way: only the models are missing.
    loading = client.post("/v1/cloak", content=b"x" * 100)
    assert loading.status_code == 503
    assert int(loading.headers["Retry-After"]) > 0


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("{tmp}/private.jpg", 403),
        ("{tmp}/exports/escape.jpg", 403),  # a symlink under the root to a file outside it
        ("{tmp}/exports/../private.jpg", 403),
        ("/etc/passwd", 403),
        ("{tmp}/exports/album/missing.jpg", 404),
        ("{tmp}/exports/notes.txt", 415),
        ("exports/album/photo.jpg", 400),
        ("", 400),
        ("{tmp}/exports/\0.jpg", 400),
    ],
)
def test_job_paths_outside_the_roots_or_not_photos_are_refused(
    server: ApiServer, dirs: Path, path: str, status: int
) -> None:
    response = unix_client(server).post("/v1/jobs", json={"path": path.format(tmp=dirs)})
    assert response.status_code == status, response.text
    assert response.json()["error"]


def test_a_photo_under_a_root_is_only_refused_for_want_of_models(server: ApiServer, dirs: Path) -> None:
    response = unix_client(server).post("/v1/jobs", json={"path": str(dirs / "exports/album/photo.jpg")})
    assert response.status_code == 503
    assert not list((dirs / "out").rglob("*.jpg"))


@pytest.mark.parametrize(
    "body", [b"not json", b"[]", b'{"path": 3}', b'{"path": "/x.jpg", "extra": 1}', b"{}", b"\xff\xfe"]
)
def test_job_requests_that_are_not_the_expected_json_are_refused(server: ApiServer, body: bytes) -> None:
    response = unix_client(server).post("/v1/jobs", content=body)
    assert response.status_code == 400
    assert "path" in response.json()["error"]


def test_unknown_jobs_and_routes_answer_json_errors(server: ApiServer) -> None:
    client = unix_client(server)
    assert client.get("/v1/jobs/0123").status_code == 404
    assert client.get("/v2/anything").json() == {"error": "Not Found"}
    assert client.get("/v1/cloak").status_code == 405


def test_openapi_describes_the_limits_and_the_token(server: ApiServer) -> None:
    on_socket = unix_client(server).get("/v1/openapi.json").json()
    assert on_socket["openapi"].startswith("3.1")
    assert set(on_socket["paths"]) == {"/v1/cloak", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/status", "/v1/openapi.json"}
    assert "security" not in on_socket
    assert str(LIMIT) in on_socket["paths"]["/v1/cloak"]["post"]["description"]
    # The summary's schema is its model's: every knob of the attack is described, and nothing else is allowed.
    preset = on_socket["components"]["schemas"]["Preset"]
    assert set(preset["properties"]) == set(Preset.model_fields) and preset["additionalProperties"] is False
    summary = on_socket["components"]["schemas"]["Summary"]
    assert summary["properties"]["preset_settings"]["$ref"] == "#/components/schemas/Preset"
    on_tcp = httpx.get(f"{tcp_url(server)}/v1/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert on_tcp["security"] == [{"bearer": []}]


def test_the_client_says_when_no_daemon_runs(dirs: Path) -> None:
    assert find_daemon() is None
    with pytest.raises(DaemonUnavailable, match="no lowkeyd daemon answers"):
        DaemonClient().cloak_bytes(b"x")


def test_the_client_finds_the_daemon_on_its_socket_and_over_tcp(
    server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = find_daemon()
    assert client is not None
    assert (client.status().queue.busy, client.status().queue.size) == (0, 4)
    monkeypatch.setenv("LOWKEYD_URL", tcp_url(server))
    monkeypatch.setenv("LOWKEYD_API_TOKEN", TOKEN)
    remote = find_daemon()
    assert remote is not None and remote.status().ready is False


def test_the_token_file_is_created_private_and_reused(dirs: Path) -> None:
    token = load_token()
    path = dirs / "config" / "api-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token) >= 32
    assert load_token() == token


def test_a_short_token_is_refused(dirs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOWKEYD_API_TOKEN", "short")
    with pytest.raises(ConfigError, match="too short"):
        load_token()


def test_a_remote_daemon_takes_the_services_whole_preset_and_its_own_while_the_service_is_down(
    server: ApiServer, dirs: Path
) -> None:
    from lowkeyd.daemon.config import RemoteConfig
    from lowkeyd.daemon.remote import remote_protector
    from lowkeyd.pipeline import PhotoProtector
    from lowkeyd.settings import ProtectionSettings

    (dirs / "token").write_text(TOKEN)
    taken: list[Preset] = []

    def rules(preset: Preset) -> PhotoProtector:
        taken.append(preset)
        return PhotoProtector(None, ProtectionSettings().model_copy(update={"preset": preset}))

    remote_protector(RemoteConfig(url=tcp_url(server), token_file=dirs / "token"), rules, _never_loaded, PRESETS["strong"])
    assert type(taken[0]) is Preset and taken[0].name == "default(steps=3)" and taken[0].steps == 3
    down = RemoteConfig(url=f"http://127.0.0.1:{free_port()}", token_file=dirs / "token", timeout=2)
    remote_protector(down, rules, _never_loaded, PRESETS["strong"])
    assert taken[1] == PRESETS["strong"]


def test_a_port_in_use_is_a_clear_error(dirs: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        api = LocalApi(
            Worker(_never_loaded, queue_size=1, batch_size=1), Outbox(dirs / "out"),
            queue_size=1, max_upload_bytes=LIMIT, timeout=5, preset=PRESETS["default"],
        )
        server = ApiServer(api, socket_path=dirs / "runtime" / "api.sock", tcp=TcpListener("127.0.0.1", port, TOKEN))
        with pytest.raises(ApiError, match=f"127.0.0.1:{port}"):
            server.start()
        # Nothing half-started is left behind.
        assert not (dirs / "runtime" / "api.sock").exists()


class _FixedAnswer(http.server.BaseHTTPRequestHandler):
    """Answers every request with the server's ``answer``: (status, headers, body)."""

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status, headers, body = self.server.answer  # type: ignore[attr-defined]
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def other_server() -> Iterator[http.server.ThreadingHTTPServer]:
    """A real HTTP server that is not this version's lowkeyd: it sends what each test sets, as another version might."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FixedAnswer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _summary_of_a_photo_without_faces() -> dict:
    outcome = Outcome("no_face", 0, 0, 0.2, None, "no face found", PRESETS["default"])
    return summarise(outcome).model_dump(mode="json")


def _cloak_with_summary(server: http.server.ThreadingHTTPServer, summary: str | None) -> tuple[bytes | None, Summary]:
    server.answer = (200, {} if summary is None else {SUMMARY_HEADER: summary}, b"photo bytes")  # type: ignore[attr-defined]
    with DaemonClient(url="http://{}:{}".format(*server.server_address)) as client:
        return client.cloak_bytes(b"a photo")


def test_the_client_validates_the_summary_into_the_preset_that_ran(
    other_server: http.server.ThreadingHTTPServer,
) -> None:
    sent = _summary_of_a_photo_without_faces()
    cloaked, summary = _cloak_with_summary(other_server, json.dumps(sent))
    assert cloaked == b"photo bytes" and summary.model_dump(mode="json") == sent
    outcome = outcome_of(summary, None)
    assert type(outcome.preset) is Preset and outcome.preset == PRESETS["default"]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        # A knob this version does not know, and one out of its range: neither is a preset this version can describe.
        (lambda s: s["preset_settings"].update(new_knob=1), "preset_settings.new_knob: Extra inputs are not permitted"),
        (lambda s: s["preset_settings"].update(steps=5000), "preset_settings.steps: Input should be less than or equal to 1000"),
        (lambda s: s.pop("faces_cloaked"), "faces_cloaked: Field required"),
        (lambda s: s.update(status="half_done"), "status: Input should be 'cloaked', 'no_face' or 'already_cloaked'"),
    ],
)
def test_a_summary_this_version_cannot_read_is_a_one_line_error(
    other_server: http.server.ThreadingHTTPServer, change: Callable[[dict], object], problem: str
) -> None:
    summary = _summary_of_a_photo_without_faces()
    change(summary)
    with pytest.raises(LowkeydError) as raised:
        _cloak_with_summary(other_server, json.dumps(summary))
    assert str(raised.value) == (
        f"the lowkeyd daemon on http://127.0.0.1:{other_server.server_address[1]} sent a summary this lowkeyd "
        f"cannot read: {problem}"
    )


def test_a_reply_that_is_not_the_api_s_is_a_one_line_error(other_server: http.server.ThreadingHTTPServer) -> None:
    for summary, problem in [(None, "answered without its X-Lowkeyd-Summary header"), ("{not json", "cannot read: Invalid JSON: ")]:
        with pytest.raises(LowkeydError, match=problem) as raised:
            _cloak_with_summary(other_server, summary)
        assert "\n" not in str(raised.value)
    other_server.answer = (200, {"Content-Type": "text/html"}, b"<html>a router's login page</html>")  # type: ignore[attr-defined]
    with DaemonClient(url="http://{}:{}".format(*other_server.server_address)) as client, \
            pytest.raises(LowkeydError, match="sent a status this lowkeyd cannot read: Invalid JSON") as raised:
        client.status()
    assert "\n" not in str(raised.value)
