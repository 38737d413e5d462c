"""The Ray Serve application: an HTTP ingress, the model replicas, and the answer book.

* ``Ingress`` (CPU): the daemon's own :class:`~lowkeyd.daemon.api.LocalApi` (routes, bearer
  token, 413, 429 with Retry-After, OpenAPI), on a :class:`~lowkeyd.cluster.intake.Intake`
  whose resource is a :class:`~lowkeyd.pipeline.PhotoProtector`: photos are decoded and
  encoded here, by the pipeline itself, and only the pixels go to the models, through a
  :class:`ServeCloaker`.
* ``CloakModel``: the ensemble resident per replica (one GPU each, or CPU replicas); with
  ``@serve.batch`` the photos of concurrent requests are one ``Cloaker.cloak_batch`` call, so
  their faces share attack batches. Scaled by the autoscaler on queue length.
* ``Ledger``: one replica holding the :class:`~lowkeyd.cluster.idempotency.AnswerBook`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import ray.exceptions
from ray import serve
from ray.serve.handle import DeploymentHandle

from lowkeyd.cluster.idempotency import Answer, AnswerBook, IdempotentUploads
from lowkeyd.cluster.intake import Intake
from lowkeyd.cluster.settings import ServeSettings
from lowkeyd.daemon.worker import WorkerStopped
from lowkeyd.engine.presets import Preset

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

        device = "cuda" if settings.gpus else "cpu"
        self.cloaker = Cloaker(settings.preset, device, threads=settings.replica_threads, **settings.attack)
        self.cloak.set_max_batch_size(settings.batch_size)
        self.cloak.set_batch_wait_timeout_s(settings.batch_wait)

    def describe(self) -> dict[str, Any]:
        return {"preset": self.cloaker.preset, "device": str(self.cloaker.device), "pid": os.getpid()}

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.05)
    async def cloak(self, items: list[tuple[np.ndarray, bool]]) -> list[CloakResult]:
        # The attack is CPU/GPU work: off the replica's event loop, which keeps answering health checks.
        return await asyncio.to_thread(self._cloak, items)

    def _cloak(self, items: Sequence[tuple[np.ndarray, bool]]) -> list[CloakResult]:
        results: list[CloakResult] = [None] * len(items)  # type: ignore[list-item] - every slot is filled below
        for luma_only in (False, True):  # grayscale photos get their own batch, as in the pipeline
            group = [i for i, item in enumerate(items) if item[1] == luma_only]
            if group:
                for i, result in zip(group, self.cloaker.cloak_batch([items[i][0] for i in group], luma_only=luma_only),
                                     strict=True):
                    results[i] = result
        return results


class ServeCloaker:
    """What :class:`~lowkeyd.pipeline.PhotoProtector` needs of a cloaker, done by the model replicas.

    It has no detector: the ingress never looks for faces itself (``protect_bytes`` does not).
    """

    detector = None
    models: tuple[()] = ()

    def __init__(self, model: DeploymentHandle, description: dict[str, Any]) -> None:
        self._model = model
        self.preset: Preset = description["preset"]
        self.device = f"ray serve ({description['device']} replicas)"

    def cloak_batch(self, images: Sequence[np.ndarray], *, luma_only: bool = False) -> list[CloakResult]:
        # One call per photo: the replicas' @serve.batch gathers the photos of concurrent requests.
        responses = [self._model.cloak.remote((rgb, luma_only)) for rgb in images]
        return [self._result(response, rgb, luma_only) for response, rgb in zip(responses, images, strict=True)]

    def _result(self, response: Any, rgb: np.ndarray, luma_only: bool) -> CloakResult:
        try:
            return response.result()
        except _REPLICA_LOST as exc:
            log.warning("a model replica was lost (%s); sending the photo again", type(exc).__name__)
        try:
            return self._model.cloak.remote((rgb, luma_only)).result()
        except _REPLICA_LOST as exc:
            raise ReplicaFailed(f"the model replicas failed twice on this photo ({type(exc).__name__}); not cloaked") from None


class Ledger:
    """The answer book, one replica for the whole service."""

    def __init__(self, keep_bytes: int, lease: float) -> None:
        self.book = AnswerBook(keep_bytes, lease)

    async def claim(self, key: str) -> Answer | None:
        return await self.book.claim(key)

    async def finish(self, key: str, answer: Answer) -> None:
        await self.book.finish(key, answer)

    async def release(self, key: str) -> None:
        await self.book.release(key)


class _LedgerBook:
    """The :class:`~lowkeyd.cluster.idempotency.Book` interface over the Ledger deployment's handle."""

    def __init__(self, ledger: DeploymentHandle) -> None:
        self._ledger = ledger

    async def claim(self, key: str) -> Answer | None:
        return await self._ledger.claim.remote(key)

    async def finish(self, key: str, answer: Answer) -> None:
        await self._ledger.finish.remote(key, answer)

    async def release(self, key: str) -> None:
        await self._ledger.release.remote(key)


class Ingress:
    """One ingress replica: the daemon's API on an intake of photos for the model replicas."""

    async def __init__(self, model: DeploymentHandle, ledger: DeploymentHandle, settings: ServeSettings) -> None:
        from lowkeyd.daemon.api.routes import BearerAuth, JobRoot, LocalApi
        from lowkeyd.daemon.memory import pixel_limit
        from lowkeyd.daemon.outbox import Outbox
        from lowkeyd.pipeline import PhotoProtector

        cloaker = ServeCloaker(model, await model.describe.remote())
        protector = PhotoProtector(  # type: ignore[arg-type] - a cloaker by interface
            cloaker, strip_gps=settings.strip_gps, no_face=settings.no_face, max_pixels=pixel_limit(None)
        )
        self.intake = Intake(protector, queue_size=settings.queue_size, concurrency=settings.concurrency)
        self._model = model
        self._settings = settings
        api = LocalApi(
            self.intake,  # type: ignore[arg-type] - the worker interface LocalApi uses
            Outbox(settings.outbox) if settings.outbox is not None else None,  # type: ignore[arg-type]
            queue_size=settings.queue_size,
            roots=[JobRoot(name, path) for name, path in settings.job_roots],
            max_upload_bytes=settings.max_upload_bytes,
            timeout=settings.timeout,
            preset=cloaker.preset.name,
            status=self._status,
        )
        app = IdempotentUploads(api.app(settings.token), _LedgerBook(ledger))
        # Authentication before the answer book too (the API checks again inside): a replayed answer
        # is a cloaked photo, for token holders only.
        self._app = app if settings.token is None else BearerAuth(app, settings.token)

    def _status(self) -> dict[str, Any]:
        s = self._settings
        return {
            "service": {
                "model_replicas": s.replicas if s.max_replicas is None else [s.replicas, s.max_replicas],
                "gpus_per_replica": int(s.gpus),
                "batch_size": s.batch_size,
                "ingress_concurrency": s.concurrency,
            }
        }

    def __serve_build_asgi_app__(self) -> Any:
        return self._app


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
    model = serve.deployment(CloakModel, name="CloakModel", **_model_options(settings))
    ledger = serve.deployment(
        Ledger, name="Ledger", num_replicas=1, max_ongoing_requests=10_000, ray_actor_options={"num_cpus": 0}
    )
    # Every request is let through to the API's own bounds (its 429), not queued by Serve in front of it.
    ingress = serve.deployment(
        serve.ingress()(Ingress),
        name="Ingress",
        num_replicas=1 if settings.job_roots else settings.ingress_replicas,
        max_ongoing_requests=settings.queue_size + settings.concurrency + 64,
        ray_actor_options={"num_cpus": 0},
    )
    lease = settings.timeout + 60
    return ingress.bind(model.bind(settings), ledger.bind(settings.keep_answers_bytes, lease), settings)
