"""The Ray Serve application: an HTTP ingress, the model replicas, and the answer book.

* ``Ingress`` (CPU): the daemon's own :class:`~lowkeyd.serving.api.LocalApi` (routes, bearer
  token, 413, 429 with Retry-After, OpenAPI), on a :class:`~lowkeyd.cluster.intake.Intake`
  whose resource is a :class:`~lowkeyd.pipeline.PhotoProtector`: photos are decoded and
  encoded here, by the pipeline itself, and only the pixels go to the models, through a
  :class:`ServeCloaker`.
* ``CloakModel``: the ensemble resident per replica (one GPU each, or CPU replicas); with
  ``@serve.batch`` the photos of concurrent requests are one ``Cloaker.cloak_batch`` call, so
  their faces share attack batches. Scaled by the autoscaler on queue length.
* ``Ledger``: one replica holding the :class:`~lowkeyd.cluster.idempotency.AnswerBook`, and the
  one place every ingress replica hears a stop from (:mod:`lowkeyd.cluster.drain`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import ray.exceptions
from ray import serve
from ray.serve.exceptions import RayServeException
from ray.serve.handle import DeploymentHandle

from lowkeyd.cluster.drain import Draining
from lowkeyd.cluster.idempotency import Answer, AnswerBook, IdempotentUploads, Reused
from lowkeyd.cluster.intake import Intake, released
from lowkeyd.cluster.settings import ServeSettings
from lowkeyd.engine.presets import Preset
from lowkeyd.serving.worker import WorkerStopped

if TYPE_CHECKING:
    from lowkeyd.engine.cloak import CloakResult

log = logging.getLogger(__name__)

APP_NAME = "lowkeyd"
# The replica died, or Serve could not reach it: the request is sent once more, to whichever replica is alive.
_REPLICA_LOST = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)


class ReplicaFailed(WorkerStopped):
    """A model replica failed twice on the same photo; nothing was written, the client may retry."""


class CloakModel:
    """One replica: the ensemble, resident, cloaking batches of photos' pixels."""

    def __init__(self, settings: ServeSettings) -> None:
        from lowkeyd.engine.cloak import Cloaker

        protection = settings.protection
        self.cloaker = Cloaker(protection.preset, protection.device, threads=settings.replica_threads)
        # serve.batch adds these setters at run time; Ray's annotations give the wrapped coroutine's type.
        self.cloak.set_max_batch_size(settings.batch_size)  # type: ignore[attr-defined]
        self.cloak.set_batch_wait_timeout_s(settings.batch_wait)  # type: ignore[attr-defined]
        self._attacking = 0  # photos in the attack now
        self._batches: collections.Counter[int] = collections.Counter()  # batches run, by size

    def describe(self) -> dict[str, Any]:
        """This replica: its device, and for operators what it does (photos now, batches so far)."""
        return {"device": str(self.cloaker.device), "pid": os.getpid(),
                "attacking": self._attacking, "batches": dict(self._batches)}

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.05)
    async def cloak(self, items: list[tuple[np.ndarray, bool]]) -> list[CloakResult]:
        self._batches[len(items)] += 1
        self._attacking += len(items)
        try:
            # The attack is CPU/GPU work: off the replica's event loop, which keeps answering health checks.
            return await asyncio.to_thread(self._cloak, items)
        finally:
            self._attacking -= len(items)

    def _cloak(self, items: Sequence[tuple[np.ndarray, bool]]) -> list[CloakResult]:
        from lowkeyd.pipeline import colour_groups

        results: dict[int, CloakResult] = {}
        for luma_only, group in colour_groups([gray for _, gray in items]):
            results.update(zip(group, self.cloaker.cloak_batch([items[i][0] for i in group], luma_only=luma_only),
                               strict=True))
        return [results[i] for i in range(len(items))]


class ServeCloaker:
    """A :class:`~lowkeyd.pipeline.CloakEngine` whose attack the model replicas run.

    Not a local engine: the ingress never looks for faces itself, the replicas do.
    """

    def __init__(
        self, model: DeploymentHandle, preset: Preset, description: dict[str, Any], native: threading.Lock
    ) -> None:
        """``preset``: the one the replicas were sent; ``native``: the intake's lock on photo decoding and
        encoding, let go of while the replicas work."""
        self._model = model
        self._native = native
        self.preset = preset
        self.device = f"ray serve ({description['device']} replicas)"
        self.resent = 0  # photos sent again after their replica was lost
        self._lock = threading.Lock()

    def cloak_batch(self, images: Sequence[np.ndarray], *, luma_only: bool = False) -> list[CloakResult]:
        # One call per photo: the replicas' @serve.batch gathers the photos of concurrent requests.
        responses = [self._model.cloak.remote((rgb, luma_only)) for rgb in images]
        with released(self._native):
            return [self._result(response, rgb, luma_only) for response, rgb in zip(responses, images, strict=True)]

    def _result(self, response: Any, rgb: np.ndarray, luma_only: bool) -> CloakResult:
        try:
            return response.result()
        except _REPLICA_LOST as exc:
            log.warning("a model replica was lost (%s); sending the photo again", type(exc).__name__)
        with self._lock:
            self.resent += 1
        try:
            return self._model.cloak.remote((rgb, luma_only)).result()
        except _REPLICA_LOST as exc:
            raise ReplicaFailed(f"the model replicas failed twice on this photo ({type(exc).__name__}); not cloaked") from None


class Ledger:
    """The answer book, one replica for the whole service; and where a stop is announced to every ingress replica."""

    def __init__(self, keep_bytes: int, lease: float, ingress_count: int) -> None:
        self.book = AnswerBook(keep_bytes, lease)
        self._ingress_count = ingress_count
        self._stop = asyncio.Event()
        self._deadline = 0.0
        self._drained = 0
        self._all_drained = asyncio.Event()

    async def claim(self, key: str, digest: str) -> Answer | Reused | None:
        return await self.book.claim(key, digest)

    async def finish(self, key: str, answer: Answer) -> None:
        await self.book.finish(key, answer)

    async def release(self, key: str) -> None:
        await self.book.release(key)

    async def stopping(self) -> float:
        """Returns once the service is stopping: the seconds of grace left."""
        await self._stop.wait()
        return max(0.0, self._deadline - time.monotonic())

    async def drained(self) -> None:
        """One ingress replica has nothing in flight any more."""
        self._drained += 1
        if self._drained >= self._ingress_count:
            self._all_drained.set()

    async def stop(self, grace: float) -> bool:
        """Stop every ingress replica (see :class:`~lowkeyd.cluster.drain.Draining`); False if some did not report."""
        if not self._stop.is_set():
            self._deadline = time.monotonic() + grace
            self._stop.set()
        try:
            # Past the grace period the ingress cancels what is left: a few seconds more for the 503s to go out.
            await asyncio.wait_for(self._all_drained.wait(), max(0.0, self._deadline - time.monotonic()) + 10)
        except TimeoutError:
            return False
        return True


class _LedgerBook:
    """The :class:`~lowkeyd.cluster.idempotency.Book` interface over the Ledger deployment's handle."""

    def __init__(self, ledger: DeploymentHandle) -> None:
        self._ledger = ledger

    async def claim(self, key: str, digest: str) -> Answer | Reused | None:
        return await self._ledger.claim.remote(key, digest)

    async def finish(self, key: str, answer: Answer) -> None:
        await self._ledger.finish.remote(key, answer)

    async def release(self, key: str) -> None:
        await self._ledger.release.remote(key)


class Ingress:
    """One ingress replica: the daemon's API on an intake of photos for the model replicas."""

    # Serve awaits an async constructor (it needs the model replicas' answer); Python's typing has no such thing.
    async def __init__(  # type: ignore[misc]
        self, model: DeploymentHandle, ledger: DeploymentHandle, settings: ServeSettings
    ) -> None:
        from lowkeyd.pipeline import PhotoProtector
        from lowkeyd.serving.api.routes import BearerAuth, JobRoot, LocalApi
        from lowkeyd.serving.jobs import Protector
        from lowkeyd.serving.memory import pixel_limit
        from lowkeyd.serving.outbox import Outbox

        native = threading.Lock()
        protection = settings.protection
        cloaker = ServeCloaker(model, protection.preset, await model.describe.remote(), native)
        protector: Protector = PhotoProtector(cloaker, protection, max_pixels=pixel_limit(protection.max_megapixels))
        self.intake = Intake(protector, native=native, queue_size=settings.queue_size, concurrency=settings.concurrency)
        self._model = model
        self._ledger = ledger
        self._cloaker = cloaker
        self._settings = settings
        api = LocalApi(
            self.intake,
            Outbox(settings.outbox) if settings.outbox is not None else None,
            queue_size=settings.queue_size,
            roots=[JobRoot(name, path) for name, path in settings.job_roots],
            max_upload_bytes=settings.max_upload_bytes,
            timeout=settings.timeout,
            preset=cloaker.preset,
            status=self._status,
        )
        app = IdempotentUploads(api.app(settings.token), _LedgerBook(ledger), max_body=settings.max_upload_bytes,
                                has_room=self.intake.has_room)
        # Authentication before the answer book too (the API checks again inside): a replayed answer
        # is a cloaked photo, for token holders only.
        self._draining = Draining(app if settings.token is None else BearerAuth(app, settings.token),
                                  busy=lambda: self.intake.busy)
        # Held here: asyncio keeps only a weak reference to a task, and this one waits for the whole lifetime.
        self._watcher = asyncio.get_running_loop().create_task(self._watch_for_stop())

    async def _watch_for_stop(self) -> None:
        while True:
            try:
                grace = await self._ledger.stopping.remote()
                break
            except (ray.exceptions.RayError, RayServeException) as exc:  # the ledger is being replaced: ask the new one
                log.warning("cannot reach the ledger (%s); asking again", type(exc).__name__)
                await asyncio.sleep(1)
        log.info("stopping: no new requests; %.0f s for those in flight", grace)
        await self._draining.drain(grace)
        await self._ledger.drained.remote()

    def _status(self) -> dict[str, Any]:
        s = self._settings
        return {
            "service": {
                "model_replicas": s.replicas if s.max_replicas is None else [s.replicas, s.max_replicas],
                "gpus_per_replica": int(s.gpus),
                "batch_size": s.batch_size,
                "ingress_concurrency": s.concurrency,
                "photos_resent": self._cloaker.resent,
            }
        }

    def __serve_build_asgi_app__(self) -> Any:
        return self._draining


def _model_options(settings: ServeSettings) -> dict[str, Any]:
    actor = {"num_gpus": 1} if settings.gpus else {"num_cpus": settings.cpus_per_replica}
    options: dict[str, Any] = {
        "ray_actor_options": actor,
        # Room for a full batch plus the next one gathering, per replica.
        "max_ongoing_requests": 2 * settings.batch_size,
        "graceful_shutdown_timeout_s": 5,
    }
    if settings.max_replicas is None:
        options["num_replicas"] = settings.replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": settings.replicas,
            "max_replicas": settings.max_replicas,
            "target_ongoing_requests": settings.target_queue,
        }
    return options


def build_app(settings: ServeSettings) -> Any:
    """The bound application, for ``serve.run(build_app(settings), name=APP_NAME, route_prefix="/")``."""
    # Ray annotates serve.deployment as the decorator it also is: used as one, the types follow.
    model = serve.deployment(name="CloakModel", **_model_options(settings))(CloakModel)
    ledger = serve.deployment(
        name="Ledger", num_replicas=1, max_ongoing_requests=10_000, ray_actor_options={"num_cpus": 0}
    )(Ledger)
    # Every photo is let through to the API's own bounds (its 429 with Retry-After, before the upload is read);
    # Serve's queue in front of the ingress only holds what the replicas' request slots cannot (status polls,
    # uploads being refused), and past that Serve answers 503 itself.
    ingress = serve.deployment(
        name="Ingress",
        num_replicas=settings.ingress_count,
        max_ongoing_requests=settings.queue_size + settings.concurrency + 64,
        max_queued_requests=64,
        # The stop drains it first (Draining); Serve's own wait is only a backstop.
        graceful_shutdown_timeout_s=settings.grace + 15,
        ray_actor_options={"num_cpus": 0},
    )(serve.ingress()(Ingress))
    lease = settings.timeout + 60
    return ingress.bind(model.bind(settings), ledger.bind(settings.keep_answers_bytes, lease, settings.ingress_count),
                        settings)
