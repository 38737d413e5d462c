"""lowkeyd as a Ray Serve application: one cloaking service for many clients and many GPUs.

An optional part (``pip install 'lowkeyd[cluster]'``): nothing else in lowkeyd imports it,
and only :mod:`lowkeyd.cluster.app` imports Ray. The service speaks the daemon's HTTP API
(:class:`~lowkeyd.daemon.api.LocalApi` itself runs in its ingress), so a daemon or
``lowkeyd cloak`` offloads to it exactly as to a daemon's TCP port.
"""

from __future__ import annotations

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
