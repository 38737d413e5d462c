"""``lowkeyd serve``: the cloaking API on Ray Serve, for many clients and many GPUs (needs ``lowkeyd[cluster]``)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import get_args

from lowkeyd.engine.presets import parse_overrides
from lowkeyd.cluster.settings import DEFAULT_GRACE
from lowkeyd.errors import LowkeydError
from lowkeyd.settings import NoFacePolicy


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the cloaking API on Ray Serve (one box, or a Ray cluster of GPU machines)",
        description="The daemon's HTTP API (POST /v1/cloak, /v1/jobs, GET /v1/status, OpenAPI; bearer token, 413, 429) "
        "on Ray Serve: model replicas with the ensemble resident (one per GPU, or CPU replicas), faces of concurrent "
        "requests batched together, replicas scaled on queue length. Needs: pip install 'lowkeyd[cluster]'. "
        "See docs/cluster.md.",
    )
    where = p.add_argument_group("where")
    where.add_argument("--address", default=None, help="the Ray cluster to join (e.g. auto, or ray://HEAD:10001); "
                       "default: a Ray instance started on this machine")
    where.add_argument("--num-cpus", type=int, default=None, help="CPUs a local Ray instance offers its replicas")
    where.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    where.add_argument("--port", type=int, default=8000)
    where.add_argument("--allow-remote", action="store_true", help="allow a --host other machines can reach")
    where.add_argument("--tls-cert", type=Path, default=None, help="serve HTTPS with this certificate (PEM; with --tls-key)")
    where.add_argument("--tls-key", type=Path, default=None, help="the certificate's private key (PEM)")
    where.add_argument("--token-file", type=Path, default=None,
                       help="the bearer token clients send (default: the daemon's api-token; $LOWKEYD_API_TOKEN overrides)")
    models = p.add_argument_group("model replicas")
    models.add_argument("--preset", default="default", help="attack preset (default: default)")
    models.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one preset setting, e.g. --set steps=20 (repeatable)")
    models.add_argument("--gpus", choices=("auto", "yes", "no"), default="auto",
                        help="one GPU per replica (auto: when the cluster has GPUs)")
    models.add_argument("--replicas", type=int, default=1, help="model replicas (the minimum with --max-replicas)")
    models.add_argument("--max-replicas", type=int, default=None, help="autoscale up to this many on queue length")
    models.add_argument("--target-queue", type=float, default=2.0, help="requests per replica the autoscaler aims at")
    models.add_argument("--cpus-per-replica", type=float, default=1.0, help="CPUs each CPU replica reserves")
    models.add_argument("--threads", type=int, default=None, help="torch threads per CPU replica")
    models.add_argument("--batch-size", type=int, default=None,
                        help="photos from concurrent requests cloaked together (default: 16 on GPUs, 4 on CPUs)")
    models.add_argument("--no-batch", action="store_true", help="one photo per model call (outputs byte for byte "
                        "those of lowkeyd cloak; see docs/cluster.md)")
    models.add_argument("--batch-wait", type=float, default=0.05, help="seconds a batch waits to fill")
    http = p.add_argument_group("requests")
    http.add_argument("--ingress-replicas", type=int, default=1, help="replicas decoding and encoding photos")
    http.add_argument("--concurrency", type=int, default=16, help="photos each ingress replica works on at once")
    http.add_argument("--queue-size", type=int, default=32, help="photos waiting per ingress replica before 429")
    http.add_argument("--max-upload-mb", type=float, default=100)
    http.add_argument("--timeout", type=float, default=600, help="seconds before a request is answered 504")
    http.add_argument("--grace", type=float, default=DEFAULT_GRACE, help="on a stop, seconds the requests in flight "
                      f"get to finish before they are answered 503 (default {DEFAULT_GRACE:g})")
    http.add_argument("--keep-gps", action="store_true", help="keep GPS position (removed by default)")
    http.add_argument("--no-face", choices=get_args(NoFacePolicy), default="copy")
    http.add_argument("--outbox", type=Path, default=None, help="shared storage for POST /v1/jobs results")
    http.add_argument("--job-root", action="append", default=[], metavar="NAME=PATH",
                      help="a folder on shared storage POST /v1/jobs may cloak from (repeatable; one ingress replica)")
    p.add_argument("--list", action="store_true", help="list the running service's replicas and their state, "
                   "through Ray (works with Ray's token authentication, no dashboard needed), and exit")
    p.set_defaults(func=run)


def _job_roots(pairs: list[str]) -> dict[str, str]:
    roots = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep:
            raise LowkeydError(f"--job-root {pair!r}: expected NAME=PATH of an existing folder")
        roots[name] = path
    return roots


def _tls(args: argparse.Namespace) -> tuple[Path, Path] | None:
    if (args.tls_cert is None) != (args.tls_key is None):
        raise LowkeydError("--tls-cert and --tls-key go together")
    if args.tls_cert is None:
        return None
    for path in (args.tls_cert, args.tls_key):
        if not path.is_file():
            raise LowkeydError(f"{path}: no such file")
    return args.tls_cert.resolve(), args.tls_key.resolve()


def _plain(status: object) -> str:
    """A status as Serve names it (its enums arrive as enums or as their plain strings)."""
    return str(getattr(status, "value", status))


def _list_replicas(address: str | None) -> int:
    """The service's deployments and their replicas' states, as Serve's controller reports them."""
    import ray
    from ray import serve

    from lowkeyd.cluster.app import APP_NAME

    where = address or "auto"
    try:
        ray.init(address=where, include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ray.exceptions.RayError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LowkeydError(f"cannot reach the Ray cluster at {where}: {first}") from None
    try:
        application = serve.status().applications.get(APP_NAME)
        if application is None:
            raise LowkeydError("no lowkeyd service runs on this Ray cluster")
        print(f"lowkeyd: {_plain(application.status)}")
        for name, deployment in sorted(application.deployments.items()):
            states = ", ".join(f"{count} {_plain(state)}" for state, count in deployment.replica_states.items())
            print(f"  {name}: {_plain(deployment.status)}; replicas: {states or 'none'}")
    finally:
        ray.shutdown()
    return 0


def run(args: argparse.Namespace) -> int:
    from lowkeyd.cluster import require_ray

    require_ray()
    if args.list:
        return _list_replicas(args.address)
    from lowkeyd.cluster.settings import ServeArgs
    from lowkeyd.daemon.config import TcpConfig
    from lowkeyd.serving.api.server import load_token, token_source

    given = ServeArgs.parse({
        "preset": args.preset, "set": parse_overrides(args.overrides), "gpus": args.gpus, "replicas": args.replicas,
        "max_replicas": args.max_replicas, "target_queue": args.target_queue, "cpus_per_replica": args.cpus_per_replica,
        "threads": args.threads, "batch_size": 1 if args.no_batch else args.batch_size, "batch_wait": args.batch_wait,
        "ingress_replicas": args.ingress_replicas, "concurrency": args.concurrency, "queue_size": args.queue_size,
        "max_upload_mb": args.max_upload_mb, "timeout": args.timeout, "grace": args.grace,
        "token_file": args.token_file, "keep_gps": args.keep_gps, "no_face": args.no_face, "outbox": args.outbox,
        "job_roots": _job_roots(args.job_root),
    }, cli=True)
    try:
        TcpConfig(host=args.host, port=args.port, allow_remote=args.allow_remote)
    except ValueError:
        raise LowkeydError(f"--host {args.host} is reachable from other machines: use 127.0.0.1, or add --allow-remote") from None
    tls = _tls(args)
    token = load_token(args.token_file)

    import ray

    from lowkeyd.cluster.run import cluster_has_gpus, start_service, stop_service

    local = {} if args.address else {"num_cpus": args.num_cpus}
    ray.init(address=args.address, include_dashboard=False, logging_level=logging.WARNING, **local)
    gpus = cluster_has_gpus() if given.gpus == "auto" else given.gpus == "yes"
    settings = given.settings(token=token, gpus=gpus)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        url = start_service(settings, host=args.host, port=args.port, tls=tls)
        kind = "GPU" if gpus else f"{args.cpus_per_replica:g}-CPU"
        scale = str(args.replicas) if args.max_replicas is None else f"{args.replicas}-{args.max_replicas}"
        batching = "off" if settings.batch_size == 1 else f"up to {settings.batch_size} photos"
        print(f"lowkeyd: serving on {url} ({scale} {kind} model replica(s), batching {batching}); "
              f"bearer token required (the token: {token_source(args.token_file)}); Ctrl-C stops", file=sys.stderr,
              flush=True)
        stop.wait()
        print(f"lowkeyd: stopping: new requests get 503; up to {settings.grace:g} s for those in flight",
              file=sys.stderr, flush=True)
    finally:
        # Only lowkeyd's application goes; Ray itself only where it was started here.
        stop_service(settings.grace, shutdown_ray=True)
    return 0
