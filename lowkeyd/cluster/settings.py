"""What the service runs: the model replicas, batching, the HTTP limits. Plain data, no Ray.

:class:`ServeArgs` is what an operator gives, as ``lowkeyd serve`` options or as the ``args:`` of
a Serve config file (``lowkeyd.cluster:app``); :class:`ServeSettings` is what the deployments get,
the preset, the token and the GPU choice resolved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from lowkeyd.errors import ConfigError
from lowkeyd.settings import NoFacePolicy, ProtectionSettings

# The default grace period of a stop: requests in flight finish within it, or are answered 503.
DEFAULT_GRACE = 30.0
# The lowkeyd serve options whose names are not the args' own.
_CLI_NAMES = {"job_roots": "--job-root", "set": "--set"}


@dataclass(frozen=True)
class ServeSettings:
    # The preset resolved and the photo policies, shipped as they are to every replica.
    protection: ProtectionSettings = field(default_factory=ProtectionSettings)
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
    grace: float = DEFAULT_GRACE  # seconds requests in flight get to finish when the service stops
    token: str | None = None
    # Shared storage for POST /v1/jobs (job ids live in the ingress: one ingress replica then).
    outbox: Path | None = None
    job_roots: tuple[tuple[str, Path], ...] = ()
    # Answers kept for retried uploads (Idempotency-Key), in bytes.
    keep_answers_bytes: int = 256 * 1024 * 1024

    @property
    def replica_threads(self) -> int:
        return self.threads or max(1, int(self.cpus_per_replica))

    @property
    def ingress_count(self) -> int:
        """Ingress replicas actually run: job ids live in one, so with job roots there is one."""
        return 1 if self.job_roots else self.ingress_replicas


class ServeArgs(BaseModel):
    """The service's settings as an operator writes them (``lowkeyd serve`` options, a Serve config's ``args:``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: str = "default"
    # Preset overrides: a mapping, or "steps=20,flip=false" as `serve run lowkeyd.cluster:app set=...` gives it.
    set: dict[str, Any] = Field(default_factory=dict)
    gpus: Literal["auto", "yes", "no"] = "auto"
    replicas: int = Field(default=1, ge=1)
    max_replicas: int | None = Field(default=None, ge=1)
    target_queue: float = Field(default=2.0, gt=0)
    cpus_per_replica: float = Field(default=1.0, gt=0)
    threads: int | None = Field(default=None, ge=1)
    batch_size: int | None = Field(default=None, ge=1)  # default: 16 on GPUs, 4 on CPUs
    batch_wait: float = Field(default=0.05, ge=0)
    ingress_replicas: int = Field(default=1, ge=1)
    concurrency: int = Field(default=16, ge=1)
    queue_size: int = Field(default=32, ge=1)
    max_upload_mb: float = Field(default=100, gt=0)
    timeout: float = Field(default=600, gt=0)
    grace: float = Field(default=DEFAULT_GRACE, ge=0)
    token_file: Path | None = None
    keep_gps: bool = False
    no_face: NoFacePolicy = "copy"
    outbox: Path | None = None
    job_roots: dict[str, Path] = Field(default_factory=dict)

    @field_validator("set", mode="before")
    @classmethod
    def _pairs(cls, value: object) -> object:
        if isinstance(value, str):
            from lowkeyd.engine.presets import parse_overrides

            return parse_overrides([pair for pair in value.split(",") if pair.strip()])
        return value

    @field_validator("job_roots")
    @classmethod
    def _roots(cls, roots: dict[str, Path]) -> dict[str, Path]:
        for name, path in roots.items():
            if not name or "/" in name or not path.is_dir():
                raise ValueError(f"{name}={path}: expected NAME=PATH of an existing folder")
        return {name: path.resolve() for name, path in roots.items()}

    _protection: ProtectionSettings = PrivateAttr()

    @model_validator(mode="after")
    def _consistent(self) -> ServeArgs:
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise ValueError("max_replicas must be at least replicas")
        if self.job_roots and self.outbox is None:
            raise ValueError("job_roots need an outbox: where the cloaked files go")
        # A bad preset setting is one error here, not a replica that fails to start over and over.
        self._protection = ProtectionSettings.resolve(self.preset, self.set, strip_gps=not self.keep_gps,
                                                      no_face=self.no_face)
        return self

    @classmethod
    def parse(cls, values: dict[str, Any], *, cli: bool = False) -> ServeArgs:
        """Validated args; the first problem as a one-line :class:`ConfigError` named as the operator wrote it."""
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(part) for part in problem["loc"])
            name = _CLI_NAMES.get(where, f"--{where.replace('_', '-')}") if cli else f"args.{where}"
            raise ConfigError(f"{name}: {problem['msg'].removeprefix('Value error, ')}" if where else
                              problem["msg"].removeprefix("Value error, ")) from None

    def settings(self, *, token: str, gpus: bool) -> ServeSettings:
        """The deployments' settings, with the bearer token and the GPU choice resolved by the caller."""
        return ServeSettings(
            protection=self._protection.model_copy(update={"device": "cuda" if gpus else "cpu"}),
            replicas=self.replicas, max_replicas=self.max_replicas,
            target_queue=self.target_queue, gpus=gpus, cpus_per_replica=self.cpus_per_replica, threads=self.threads,
            batch_size=self.batch_size or (16 if gpus else 4), batch_wait=self.batch_wait,
            ingress_replicas=self.ingress_replicas, concurrency=self.concurrency, queue_size=self.queue_size,
            max_upload_bytes=int(self.max_upload_mb * 1024 * 1024), timeout=self.timeout, grace=self.grace,
            token=token, outbox=self.outbox, job_roots=tuple(self.job_roots.items()),
        )
