"""The shipped Serve config file, deployed with Serve's own ``serve run`` as an operator (or KubeRay) would.

Its own module, so its Ray instance (``serve run`` starts one) never runs beside test_cluster's.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from lowkeyd.cluster import app as app_builder
from lowkeyd.errors import ConfigError

CONFIG = Path(__file__).resolve().parent.parent / "service" / "serve" / "lowkeyd.yaml"
TOKEN = "config-test-token-0123456789"
pytestmark = pytest.mark.filterwarnings("ignore:Using extra keyword arguments on `Field`:DeprecationWarning")
needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="Ray Serve is not installed (pip install 'lowkeyd[cluster]')"
)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_config_names_the_application_builder_and_its_args_are_valid() -> None:
    from lowkeyd.cluster.settings import ServeArgs

    config = yaml.safe_load(CONFIG.read_text())
    (application,) = config["applications"]
    assert application["import_path"] == "lowkeyd.cluster:app"
    ServeArgs.parse(application["args"])  # every key known, every value in range


@needs_ray
def test_the_builder_refuses_bad_args_and_a_missing_token_in_one_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("LOWKEYD_API_TOKEN", raising=False)
    with pytest.raises(ConfigError, match=r"^args\.replicas: Input should be greater than or equal to 1$"):
        app_builder({"replicas": 0})
    with pytest.raises(ConfigError, match=r"does not exist"):
        app_builder({"token_file": str(tmp_path / "none")})
    assert not (tmp_path / "none").exists()  # never created where Serve builds the application


@pytest.mark.slow
@needs_ray
def test_serve_run_of_the_shipped_config_answers_status(tmp_path: Path) -> None:
    port = _free_port()
    config = yaml.safe_load(CONFIG.read_text())
    config["http_options"]["port"] = port  # the only change: 8000 may be taken on a shared machine
    (tmp_path / "lowkeyd.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "LOWKEYD_URL")}
    env.update(LOWKEYD_API_TOKEN=TOKEN, OMP_NUM_THREADS="1", LOWKEYD_THREADS="1",
               LOWKEYD_STATE_DIR=str(tmp_path / "state"), LOWKEYD_CONFIG_DIR=str(tmp_path / "config"))
    serve_cli = Path(sys.executable).with_name("serve")
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        # Its own session: whatever Ray processes it starts can be found and ended with it.
        process = subprocess.Popen([str(serve_cli), "run", str(tmp_path / "lowkeyd.yaml")], stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=log, env=env, cwd=tmp_path, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        status = None
        while status is None or status.status_code != 200:
            if process.poll() is not None:
                pytest.fail(f"serve run exited ({process.returncode}):\n{log_path.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no answer on /v1/status within 600 s:\n{log_path.read_text()[-4000:]}")
            time.sleep(1)
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/v1/status", headers={"Authorization": f"Bearer {TOKEN}"})
            except httpx.TransportError:
                status = None
        report = status.json()
        assert report["ready"] and report["preset"] == "default", report
        assert report["service"]["model_replicas"] == 1 and report["service"]["batch_size"] == 4
        assert httpx.get(f"http://127.0.0.1:{port}/v1/status").status_code == 401
        assert not (tmp_path / "config").exists()  # the token came from the environment; no file was made
    finally:
        process.send_signal(signal.SIGINT)  # serve run's own stop: Serve shut down, its Ray instance with it
        try:
            process.wait(180)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
