"""The local HTTP API: other tools hand the running daemon a photo and get the protected one back.

Every request's work goes through the daemon's one :class:`~lowkeyd.serving.worker.Worker`,
on the models already loaded for the watched folders, so a photo takes seconds
instead of a model load. The worker's queue is bounded and the API never waits
for room in it: a full queue is answered at once with 429 and a Retry-After,
before the upload is even read, so a flood of requests costs neither memory nor
time. Bodies are limited in size (413), and a request that waits longer than its
timeout is answered 504 (its job is dropped if it has not started).

``POST /v1/cloak`` takes the photo's bytes and answers the cloaked photo in the same
format; the JSON summary (faces, preset, similarity per ensemble member) is in the
``X-Lowkeyd-Summary`` response header. ``POST /v1/jobs`` cloaks a file under one of
the configured job roots into the outbox, like a watched photo. The OpenAPI
description is at ``/v1/openapi.json`` (see :mod:`lowkeyd.serving.api.openapi`).
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import io
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from lowkeyd import __version__
from lowkeyd.engine.transfer import transfer_estimate
from lowkeyd.errors import LowkeydError, PhotoError
from lowkeyd.paths import is_within
from lowkeyd.photo import is_photo_path
from lowkeyd.photo.formats import SUPPORTED_LIST
from lowkeyd.serving.api import wire
from lowkeyd.serving.api.openapi import openapi_document
from lowkeyd.serving.jobs import BytesJob, FileJob, Protector, Published, finish
from lowkeyd.serving.outbox import Outbox
from lowkeyd.serving.worker import Job, JobQueue, QueueFull, WorkerStopped

if TYPE_CHECKING:
    from lowkeyd.engine.presets import Preset
    from lowkeyd.pipeline import Outcome

log = logging.getLogger(__name__)

# A job request is a path in JSON; anything bigger is not one.
MAX_JSON_BYTES = 64 * 1024
# Finished jobs remembered for GET /v1/jobs/{id}; the oldest are forgotten first.
KEEP_JOBS = 1000
# Until a job has been timed, Retry-After assumes this many seconds per queued photo.
_FIRST_GUESS_SECONDS = 10.0


@dataclass(frozen=True)
class JobRoot:
    """A folder ``POST /v1/jobs`` may cloak files from; results go to ``<outbox>/<name>/<path under it>``."""

    name: str
    path: Path  # resolved


def summarise(outcome: Outcome) -> wire.Summary:
    """The summary of one photo's outcome, as the API reports it."""
    faces = [
        wire.Face(
            box=tuple(round(v, 1) for v in face.box),
            size=round(face.size, 1),
            status=face.status,
            similarity={m: round(s, 4) for m, s in face.similarity.items()},
            thresholds=face.thresholds,
            protected_against=face.protected_against,
            lpips=None if face.lpips is None else round(face.lpips, 4),
        )
        for face in outcome.faces
    ]
    members = sorted({m for face in outcome.faces if face.status == "cloaked" for m in face.similarity})
    estimate = transfer_estimate(outcome.preset, face_sizes=[face.size for face in outcome.faces])
    return wire.Summary(
        status=outcome.status,
        message=outcome.message,
        faces_cloaked=outcome.faces_cloaked,
        faces_too_small=outcome.faces_too_small,
        preset=outcome.preset.name,
        # The preset's every setting, overrides applied: the name says which preset, this what it ran.
        preset_settings=outcome.preset,
        seconds=round(outcome.seconds, 3),
        # Per ensemble member: is every cloaked face past that member's match threshold?
        protected_against={
            m: all(f.protected_against[m] for f in outcome.faces if f.status == "cloaked") for m in members
        },
        faces=faces,
        # Every member above is white-box; what an unseen recogniser does is the holdout bench's estimate.
        holdout_estimate=None if estimate is None else wire.HoldoutEstimate.model_validate(estimate.as_dict()),
    )


def _json(model: BaseModel, status_code: int = 200, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"), status_code=status_code, headers=headers)


def _media_type(data: bytes) -> str:
    """The photo's MIME type, read from its header (the pipeline keeps the input's format)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return Image.MIME.get(image.format or "", "application/octet-stream")
    except Exception:  # an unknown container still goes back as it came: bytes
        return "application/octet-stream"


def _error(status: int, message: str, retry_after: str | None = None) -> HTTPException:
    return HTTPException(status, message, None if retry_after is None else {"Retry-After": retry_after})


async def _json_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _json(wire.Error(error=exc.detail), exc.status_code, exc.headers)


JobStatus = Literal["queued", "running", "done", "failed"]


@dataclass
class ApiJob:
    id: str
    path: Path
    root: str
    created: float = field(default_factory=time.time)
    status: JobStatus = "queued"
    finished: float | None = None
    output: Path | None = None
    summary: wire.Summary | None = None
    error: str | None = None

    def view(self) -> wire.Job:
        return wire.Job(
            id=self.id,
            status=self.status,
            path=str(self.path),
            root=self.root,
            created=self.created,
            finished=self.finished,
            output=None if self.output is None else str(self.output),
            summary=self.summary,
            error=self.error,
        )


class _JobBook:
    """The API's jobs, by id. In memory only: ids do not survive a restart (the outbox does)."""

    def __init__(self, keep: int = KEEP_JOBS) -> None:
        self._jobs: collections.OrderedDict[str, ApiJob] = collections.OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()

    def add(self, job: ApiJob) -> None:
        with self._lock:
            self._jobs[job.id] = job
            finished = [j.id for j in self._jobs.values() if j.finished is not None]
            for old in finished[: max(0, len(self._jobs) - self._keep)]:
                del self._jobs[old]

    def get(self, job_id: str) -> ApiJob | None:
        with self._lock:
            return self._jobs.get(job_id)

    def remove(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(collections.Counter(j.status for j in self._jobs.values()))


class LocalApi:
    """The API's state and its Starlette app; the daemon (or an ingress replica) owns the worker, outbox and hook
    it is given.

    ``preset`` is the attack the worker's models run, as the daemon's config resolved it. ``outbox`` is None
    only without job roots (lowkeyd serve without one): ``POST /v1/jobs`` then refuses every path.
    """

    def __init__(
        self,
        worker: JobQueue[Protector],
        outbox: Outbox | None,
        *,
        queue_size: int,
        roots: Sequence[JobRoot] = (),
        max_upload_bytes: int,
        timeout: float,
        preset: Preset,
        on_published: Callable[[Published], None] | None = None,
        status: Callable[[], dict[str, Any]] | None = None,
        extra_routes: Sequence[BaseRoute] = (),
    ) -> None:
        self.worker = worker
        self.outbox = outbox
        self.queue_size = queue_size
        self.roots = list(roots)
        self.max_upload_bytes = max_upload_bytes
        self.timeout = timeout
        self.preset = preset
        self.on_published = on_published
        self._status = status
        self.extra_routes = list(extra_routes)  # the status page's login route
        self.jobs = _JobBook()
        self._seconds_per_photo = _FIRST_GUESS_SECONDS
        self._started = time.time()

    def app(self, token: str | None = None) -> ASGIApp:
        """The ASGI app; with ``token``, every request must carry it as a bearer token."""
        document = openapi_document(
            self.max_upload_bytes, self.timeout, [r.name for r in self.roots], bearer=token is not None
        )

        async def openapi(request: Request) -> Response:
            return JSONResponse(document)

        app = Starlette(
            routes=[
                Route("/v1/cloak", self._cloak, methods=["POST"]),
                Route("/v1/jobs", self._create_job, methods=["POST"]),
                Route("/v1/jobs/{job_id}", self._get_job, methods=["GET"]),
                Route("/v1/status", self._get_status, methods=["GET"]),
                Route("/v1/openapi.json", openapi, methods=["GET"]),
                *self.extra_routes,
            ],
            exception_handlers={HTTPException: _json_error},
        )
        return app if token is None else BearerAuth(app, token)

    # ---- the queue

    def _retry_after(self) -> str:
        return str(min(600, max(1, math.ceil(self._seconds_per_photo * max(1, self.worker.busy)))))

    def _refuse_when_full(self) -> None:
        # Before the upload is read: a flood is turned away without holding its bodies in memory.
        if not self.worker.has_room():
            raise self._full()

    def _full(self) -> HTTPException:
        message = f"the queue is full ({self.queue_size} photos waiting); try again later"
        return _error(429, message, self._retry_after())

    def _submit(self, job: Job[Protector, Any]) -> Future[Any]:
        if self.worker.resource is None:
            raise _error(503, "lowkeyd is still loading its models", retry_after="10")
        try:
            return self.worker.submit(job)
        except QueueFull:
            raise self._full() from None
        except WorkerStopped as exc:
            raise _error(503, str(exc), retry_after="30") from None

    def _timed(self, seconds: float) -> None:
        # A moving average: what the next refused client is told to wait per queued photo.
        self._seconds_per_photo = 0.8 * self._seconds_per_photo + 0.2 * seconds

    # ---- requests

    async def _read_body(self, request: Request, limit: int) -> bytes:
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise _error(413, f"the request is {int(length)} bytes; the limit is {limit}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise _error(413, f"the request is over the limit of {limit} bytes")
        return bytes(body)

    def _request_timeout(self, request: Request) -> float:
        given = request.query_params.get("timeout")
        if given is None:
            return self.timeout
        try:
            seconds = float(given)
        except ValueError:
            seconds = math.nan
        if not 0 < seconds <= self.timeout:
            raise _error(400, f"timeout must be a number of seconds in (0, {self.timeout:g}]")
        return seconds

    async def _cloak(self, request: Request) -> Response:
        timeout = self._request_timeout(request)
        self._refuse_when_full()
        data = await self._read_body(request, self.max_upload_bytes)
        if not data:
            raise _error(400, "the request body is empty: send the photo's bytes")
        future = self._submit(BytesJob(data))
        try:
            cloaked, outcome = await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except TimeoutError:
            # wait_for cancelled the future: a job still waiting is dropped, a running one finishes unseen.
            raise _error(504, f"not done within {timeout:g} s; lowkeyd is busy or the photo is large") from None
        except PhotoError as exc:
            raise _error(415, str(exc)) from None
        except WorkerStopped as exc:  # stopping, or the service's model replicas lost: nothing was written
            raise _error(503, str(exc), retry_after="10") from None
        except LowkeydError as exc:  # the engine's: a face that could not be protected is never returned
            raise _error(422, str(exc)) from None
        self._timed(outcome.seconds)
        # json.dumps: its ASCII escapes keep any text in the summary a valid header value.
        headers = {wire.SUMMARY_HEADER: json.dumps(summarise(outcome).model_dump(mode="json"))}
        if cloaked is None:
            return Response(status_code=204, headers=headers)
        return Response(cloaked, media_type=_media_type(cloaked), headers=headers)

    def _resolve(self, given: str) -> tuple[Path, JobRoot, Path]:
        """The file a job names, its root and its path under it; 403 for anything outside the roots."""
        if not given or not os.path.isabs(given):
            raise _error(400, "path must be an absolute path")
        try:
            # Symlinks resolved first: a link under a root pointing elsewhere is outside it.
            path = Path(given).resolve()
        except (OSError, ValueError) as exc:
            raise _error(400, f"path cannot be resolved: {exc}") from None
        root = next((r for r in self.roots if is_within(path, r.path)), None)
        if root is None:
            where = "the job roots" if self.roots else "a job root (none is configured: api.job_roots)"
            raise _error(403, f"{given} is not under {where}")
        if not path.is_file():
            raise _error(404, f"{given}: no such file")
        if not is_photo_path(path):
            raise _error(415, f"{given}: not a photo file lowkeyd cloaks ({SUPPORTED_LIST})")
        return path, root, path.relative_to(root.path)

    async def _create_job(self, request: Request) -> Response:
        body = await self._read_body(request, MAX_JSON_BYTES)
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise _error(400, 'expected JSON: {"path": "/absolute/path/to/photo.jpg"}') from None
        if not isinstance(payload, dict) or set(payload) != {"path"} or not isinstance(payload["path"], str):
            raise _error(400, 'expected JSON: {"path": "/absolute/path/to/photo.jpg"}')
        path, root, rel = self._resolve(payload["path"])
        outbox = self.outbox
        assert outbox is not None  # a root was found, and roots come with an outbox
        self._refuse_when_full()
        job = ApiJob(uuid.uuid4().hex, path, root.name)
        dest = outbox.destination(root.name, rel)
        work = FileJob(path, outbox.stage(dest), dest, root.name, lambda: setattr(job, "status", "running"))
        self.jobs.add(job)
        try:
            future = self._submit(work)
        except HTTPException:
            outbox.discard(work.staged)
            self.jobs.remove(job.id)
            raise
        future.add_done_callback(lambda f: self._finish_job(job, work, outbox, f))
        return _json(job.view(), 202, {"Location": f"/v1/jobs/{job.id}"})

    def _finish_job(self, job: ApiJob, work: FileJob, outbox: Outbox, future: Future[Outcome]) -> None:
        """Publish a finished job's photo (in the worker thread, like the daemon's own)."""
        try:
            if future.cancelled():
                raise WorkerStopped("lowkeyd stopped before the job ran")
            outcome = future.result()
            self._timed(outcome.seconds)
            job.output = finish(work, outcome, outbox, hook=self.on_published)
            job.summary = summarise(outcome)
        except Exception as exc:
            outbox.discard(work.staged)
            if not isinstance(exc, LowkeydError):
                log.error("API job %s (%s): unexpected error", job.id, job.path, exc_info=exc)
            job.error = str(exc) or type(exc).__name__
            job.finished = time.time()
            job.status = "failed"
            log.warning("API job %s (%s) failed: %s", job.id, job.path, job.error)
            return
        job.finished = time.time()
        job.status = "done"
        log.info("API job %s: %s: %s", job.id, job.path, outcome.message)

    async def _get_job(self, request: Request) -> Response:
        job = self.jobs.get(request.path_params["job_id"])
        if job is None:
            raise _error(404, "no such job (job ids do not survive a restart of lowkeyd)")
        return _json(job.view())

    async def _get_status(self, request: Request) -> Response:
        resource = self.worker.resource
        report = wire.Status(
            version=__version__,
            pid=os.getpid(),
            started=self._started,
            ready=resource is not None,
            preset=self.preset.name,
            preset_settings=self.preset,
            device=None if resource is None else resource.device,
            queue=wire.Queue(busy=self.worker.busy, size=self.queue_size),
            jobs=self.jobs.counts(),
            **({} if self._status is None else self._status()),
        )
        # What the daemon did not report (a service has no watched files) is left out rather than sent as null.
        return JSONResponse(report.model_dump(mode="json", exclude_unset=True))


class BearerAuth:
    """Refuses every request without ``Authorization: Bearer <token>`` (compared in constant time)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"")
            # The scheme is case-insensitive (RFC 7235): "bearer x" is as good as "Bearer x".
            scheme, _, credentials = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(credentials.strip(), self._expected):
                message = "missing bearer token" if not given else "wrong bearer token"
                response = _json(wire.Error(error=message), 401, {"WWW-Authenticate": 'Bearer realm="lowkeyd"'})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
