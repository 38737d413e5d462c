"""Starting and stopping the service on a Ray instance: a local one, or a cluster's."""

from __future__ import annotations

import logging
import time
from typing import Any

import ray
from ray import serve

from lowkeyd.cluster.app import APP_NAME, build_app
from lowkeyd.cluster.settings import ServeSettings

log = logging.getLogger(__name__)


def cluster_has_gpus() -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0


def start_service(
    settings: ServeSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
    num_cpus: int | None = None,
    runtime_env: dict[str, Any] | None = None,
) -> str:
    """Run the service (joining the Ray cluster at ``address``, else starting one here) and return its URL.

    ``num_cpus`` bounds a local instance's logical CPUs (what replicas may reserve).
    """
    if not ray.is_initialized():
        local = {} if address else {"num_cpus": num_cpus}
        ray.init(address=address, include_dashboard=False, runtime_env=runtime_env, logging_level=logging.WARNING, **local)
    # Warnings and errors only: Serve's progress lines and one access-log line per photo would drown what matters.
    quiet = {"log_level": "WARNING", "enable_access_log": False}
    serve.start(http_options={"host": host, "port": port}, logging_config=quiet)
    started = time.monotonic()
    serve.run(build_app(settings), name=APP_NAME, route_prefix="/", logging_config=quiet)
    log.info("lowkeyd service up in %.0f s", time.monotonic() - started)
    return f"http://{host}:{port}"


def stop_service(*, shutdown_ray: bool = True) -> None:
    serve.shutdown()
    if shutdown_ray:
        ray.shutdown()
