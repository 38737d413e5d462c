"""Starting and stopping the service on a Ray instance: a local one, or a cluster's."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.serve.exceptions import RayServeException

from lowkeyd.cluster.app import APP_NAME, build_app
from lowkeyd.cluster.settings import ServeSettings

log = logging.getLogger(__name__)

# Warnings and errors only: Serve's progress lines and one access-log line per photo would drown what matters.
QUIET = {"log_level": "WARNING", "enable_access_log": False}


def cluster_has_gpus() -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0


def http_options(
    settings: ServeSettings, *, host: str, port: int, tls: tuple[Path, Path] | None = None
) -> dict[str, Any]:
    """Serve's HTTP options for this service: where, TLS (certificate, key), and an end-to-end bound.

    ``request_timeout_s`` also covers the upload, which the API's own 504 (counted from when the photo
    was read) does not; past it Serve answers 408.
    """
    options: dict[str, Any] = {"host": host, "port": port, "request_timeout_s": settings.timeout + settings.grace + 60}
    if tls is not None:
        options.update(ssl_certfile=str(tls[0]), ssl_keyfile=str(tls[1]))
    return options


def start_service(
    settings: ServeSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    tls: tuple[Path, Path] | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    runtime_env: dict[str, Any] | None = None,
) -> str:
    """Run the service (joining the Ray cluster at ``address``, else starting one here) and return its URL.

    ``num_cpus`` bounds a local instance's logical CPUs (what replicas may reserve). Where Serve already
    runs on the cluster, its HTTP options (port, TLS) are the ones in force: Serve keeps the first.
    """
    if not ray.is_initialized():
        # A cluster joined keeps its own CPU count: Ray refuses num_cpus there.
        ray.init(
            address=address,
            num_cpus=None if address else num_cpus,
            include_dashboard=False,
            runtime_env=runtime_env,
            logging_level=logging.WARNING,
        )
    serve.start(http_options=http_options(settings, host=host, port=port, tls=tls), logging_config=QUIET)
    started = time.monotonic()
    serve.run(build_app(settings), name=APP_NAME, route_prefix="/", logging_config=QUIET)
    log.info("lowkeyd service up in %.0f s", time.monotonic() - started)
    return f"{'https' if tls else 'http'}://{host}:{port}"


def stop_service(grace: float, *, shutdown_ray: bool = True) -> None:
    """Stop gracefully (new requests 503, those in flight get ``grace`` seconds), then delete lowkeyd's application.

    Only lowkeyd's own: other Serve applications on the cluster, and Serve itself, keep running.
    """
    try:
        ledger = serve.get_deployment_handle("Ledger", APP_NAME)
        if not ledger.stop.remote(grace).result(timeout_s=grace + 60):
            log.warning("not every ingress replica reported it had drained")
    except (ray.exceptions.RayError, RayServeException, TimeoutError) as exc:
        log.warning("could not stop the requests in flight gracefully: %s", exc)
    serve.delete(APP_NAME)
    if shutdown_ray:
        ray.shutdown()
