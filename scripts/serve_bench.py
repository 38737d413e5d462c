#!/usr/bin/env python3
"""Throughput and latency of ``lowkeyd serve`` on this machine: faces per minute and latency percentiles.

Starts a local Ray instance and, for each service layout (1 or 2 model replicas, batching on
or off), sends the sample photos from 1, 8 and 32 concurrent clients over HTTP, as a real
client would (a 429 is waited out as its Retry-After says). Prints a Markdown table (faces per
minute, p50 and p95 latency), and how many batched answers are byte for byte the unbatched ones.

    scripts/serve_bench.py                         # CPU replicas, the fast test attack (5 steps)
    scripts/serve_bench.py --set steps=20 --replicas 1 --clients 1,8
    scripts/serve_bench.py --gpus --set ''          # the GPU rows: one GPU per replica, the preset as it is

Needs ``lowkeyd[cluster]``. A benchmark, not a test: the numbers depend on the machine and
on whatever else runs on it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import socket
import statistics
import sys
import time
from pathlib import Path

import httpx

SAMPLES = Path(__file__).resolve().parent.parent / "lowkeyd" / "samples"
PHOTOS = ("obama.jpg", "obama2.jpg", "biden.jpg", "astronaut.png")
# The tests' short attack (large steps, no LPIPS, flip or blur views): it protects the sample faces in a
# few steps, so a run takes minutes on a 2-core CPU. Visibility does not matter for throughput.
FAST = "steps=5,step_size=0.05,lpips_weight=0,flip=false,blur_kernel=0"
TOKEN = "serve-bench-token-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def _send(client: httpx.Client, data: bytes) -> tuple[float, int, bytes]:
    """(seconds, faces cloaked, answer) for one photo, waiting out 429s."""
    start = time.perf_counter()
    while True:
        response = client.post("/v1/cloak", content=data)
        if response.status_code != 429:
            break
        time.sleep(float(response.headers.get("Retry-After", "1")))
    if response.status_code != 200:
        raise SystemExit(f"serve_bench: the service answered {response.status_code}: {response.text}")
    faces = json.loads(response.headers["X-Lowkeyd-Summary"])["faces_cloaked"]
    return time.perf_counter() - start, faces, response.content


def _load(url: str, clients: int, photos: list[tuple[str, bytes]], per_client: int) -> dict:
    """``clients`` concurrent clients, each sending ``per_client`` photos one after another."""
    results: list[tuple[str, float, int, bytes]] = []

    def client_loop(n: int) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=3600) as client:
            for k in range(per_client):
                name, data = photos[(n + k) % len(photos)]
                seconds, faces, answer = _send(client, data)
                results.append((name, seconds, faces, answer))

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(client_loop, range(clients)))
    wall = time.perf_counter() - start
    latencies = [r[1] for r in results]
    return {
        "faces": sum(r[2] for r in results),
        "wall": wall,
        "latencies": latencies,
        "answers": [(r[0], hashlib.sha256(r[3]).hexdigest()) for r in results],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default=FAST, help=f"preset overrides, comma-separated (default: {FAST})")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--replicas", default="1,2", help="model replica counts to run (default 1,2)")
    parser.add_argument("--clients", default="1,8,32", help="concurrent client counts (default 1,8,32)")
    parser.add_argument("--batch-size", type=int, default=None, help="photos per batch when batching is on "
                        "(default: 16 on GPUs, 4 on CPUs)")
    parser.add_argument("--photos", type=int, default=1, help="photos sent per run, at least one per client")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per CPU replica")
    parser.add_argument("--gpus", action="store_true", help="one GPU per model replica")
    parser.add_argument("--batching", choices=("off,on", "off", "on"), default="off,on", help="layouts to run")
    args = parser.parse_args()

    from lowkeyd.engine.presets import parse_overrides
    from lowkeyd.cluster import require_ray
    from lowkeyd.cluster.run import start_service, stop_service
    from lowkeyd.cluster.settings import ServeSettings
    from lowkeyd.settings import ProtectionSettings

    require_ray()
    overrides = parse_overrides([pair for pair in args.set.split(",") if pair])
    protection = ProtectionSettings.resolve(args.preset, overrides, device="cuda" if args.gpus else "cpu")
    photos = [(name, (SAMPLES / name).read_bytes()) for name in PHOTOS]
    replicas = [int(n) for n in args.replicas.split(",")]
    client_counts = [int(n) for n in args.clients.split(",")]
    port = _free_port()
    batch_size = args.batch_size or (16 if args.gpus else 4)
    rows = []
    unbatched: dict[str, set[str]] = {}
    same = differ = 0
    try:
        for n in replicas:
            for batch in [{"off": 1, "on": batch_size}[b] for b in args.batching.split(",")]:
                settings = ServeSettings(
                    protection=protection, replicas=n, threads=args.threads, batch_size=batch,
                    gpus=args.gpus, concurrency=max(client_counts), token=TOKEN,
                )
                started = time.perf_counter()
                url = start_service(settings, port=port, num_cpus=max(replicas) + 1)
                print(f"# {n} replica(s), batch {batch}: up in {time.perf_counter() - started:.0f} s", file=sys.stderr)
                _load(url, 1, photos, 1)  # warm-up: first calls pay for lazy initialisation
                for clients in client_counts:
                    run = _load(url, clients, photos, max(1, -(-args.photos // clients)))
                    lat = run["latencies"]
                    rows.append((n, "off" if batch == 1 else f"on ({batch})", clients, len(lat), run["faces"],
                                 60 * run["faces"] / run["wall"], statistics.median(lat), _percentile(lat, 95)))
                    print("| " + " | ".join(_cell(v) for v in rows[-1]) + " |", file=sys.stderr)
                    for name, digest in run["answers"]:
                        if batch == 1:
                            unbatched.setdefault(name, set()).add(digest)
                        elif name in unbatched:
                            same, differ = (same + 1, differ) if digest in unbatched[name] else (same, differ + 1)
    finally:
        stop_service(0)
    where = "one GPU per replica" if args.gpus else f"{args.threads} torch thread(s) per CPU replica"
    print(f"\npreset {args.preset} with {args.set}; {where}; photos {', '.join(PHOTOS)} (one face each)\n")
    print("| model replicas | batching | clients | photos | faces | faces/min | p50 s | p95 s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(_cell(v) for v in row) + " |")
    print(f"\nunbatched answers of one photo identical to each other: "
          f"{all(len(d) == 1 for d in unbatched.values())}; batched answers identical to the unbatched one: "
          f"{same} of {same + differ}")
    return 0


def _cell(value: object) -> str:
    return f"{value:.1f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    sys.exit(main())
