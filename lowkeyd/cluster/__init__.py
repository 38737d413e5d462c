"""lowkeyd as a Ray Serve application: one cloaking service for many clients and many GPUs.

An optional part (``pip install 'lowkeyd[cluster]'``): nothing else in lowkeyd imports it,
and only :mod:`lowkeyd.cluster.app` and :mod:`lowkeyd.cluster.run` import Ray. The service speaks the daemon's HTTP API
(:class:`~lowkeyd.serving.api.LocalApi` itself runs in its ingress), so a daemon or
``lowkeyd cloak`` offloads to it exactly as to a daemon's TCP port.
"""

from __future__ import annotations

from typing import Any

from lowkeyd.errors import LowkeydError


class RayMissing(LowkeydError):
    """Ray Serve is not installed."""


def require_ray() -> None:
    """Raise a one-line :class:`RayMissing` when Ray Serve cannot be imported."""
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError:
        raise RayMissing("lowkeyd serve needs Ray Serve: pip install 'lowkeyd[cluster]'") from None


def app(args: dict[str, Any]) -> Any:
    """The application builder for Serve's own tools: ``serve run lowkeyd.cluster:app replicas=2``, or
    ``import_path: lowkeyd.cluster:app`` with ``args:`` in a Serve config (``serve deploy``, KubeRay).

    ``args`` are :class:`~lowkeyd.cluster.settings.ServeArgs`. It runs where Serve builds the application
    (a task on the cluster): the token comes from ``$LOWKEYD_API_TOKEN`` (a Kubernetes Secret, say) or
    ``args.token_file`` or the default token file, and is never created there.
    """
    require_ray()
    from lowkeyd.cluster.app import build_app
    from lowkeyd.cluster.run import cluster_has_gpus
    from lowkeyd.cluster.settings import ServeArgs
    from lowkeyd.serving.api.server import load_token

    given = ServeArgs.parse(dict(args))
    token = load_token(given.token_file, create=False)
    gpus = cluster_has_gpus() if given.gpus == "auto" else given.gpus == "yes"
    return build_app(given.settings(token=token, gpus=gpus))
