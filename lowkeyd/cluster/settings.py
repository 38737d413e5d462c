"""What ``lowkeyd serve`` runs: the model replicas, batching, the HTTP limits. Plain data, no Ray."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


@dataclass(frozen=True)
class ServeSettings:
    preset: str = "default"
    attack: dict[str, Any] = field(default_factory=dict)  # preset overrides, as --set gives them
    # Model replicas, each with the whole ensemble resident; with max_replicas the autoscaler moves
    # between the two on queue length (ongoing requests per replica, aiming at target_queue).
    replicas: int = 1
    max_replicas: int | None = None
    target_queue: float = 2.0
    gpus: bool = False  # one GPU per model replica (else CPU replicas)
    cpus_per_replica: float = 1.0
    threads: int | None = None  # torch CPU threads per replica (default: cpus_per_replica)
    # Photos from different requests put through the ensemble together; 1 turns batching off.
    batch_size: int = 4
    batch_wait: float = 0.05  # seconds a batch waits to fill
    # The ingress: decoding and encoding photos, the limits of the daemon's API.
    ingress_replicas: int = 1
    concurrency: int = 16  # photos one ingress replica decodes, sends and encodes at once
    queue_size: int = 32  # photos waiting per ingress replica before 429
    max_upload_bytes: int = 100 * 1024 * 1024
    timeout: float = 600.0
    token: str | None = None
    strip_gps: bool = True
    no_face: Literal["copy", "skip"] = "copy"
    # Shared storage for POST /v1/jobs (job ids live in the ingress: one ingress replica then).
    outbox: Path | None = None
    job_roots: tuple[tuple[str, Path], ...] = ()
    # Answers kept for retried uploads (Idempotency-Key), in bytes.
    keep_answers_bytes: int = 256 * 1024 * 1024

    @property
    def replica_threads(self) -> int:
        return self.threads or max(1, int(self.cpus_per_replica))
