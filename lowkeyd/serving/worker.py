"""One thread that owns the resident models, fed from a bounded queue.

Loading the models takes seconds to minutes and a lot of memory, so one
process loads them once and every job (a watched photo, later a request on
the local API) runs on that one copy, one batch at a time. Jobs of one kind
that are waiting together (a burst of photos) are handed over as one batch,
so the engine can put the faces of several photos through the models
together. The queue is bounded: :meth:`Worker.submit` refuses with
:class:`QueueFull` rather than piling up work.
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from lowkeyd.errors import LowkeydError

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)

R = TypeVar("R")  # the resident resource (the models)
T = TypeVar("T")


class QueueFull(LowkeydError):
    """The queue is full; the caller should try again later."""


class WorkerStopped(LowkeydError):
    """The worker is stopping or stopped and takes no more jobs."""


class Job(ABC, Generic[R, T]):
    """A unit of work for the resident resource.

    Consecutive waiting jobs of the same class are run together by
    :meth:`run_batch`; a subclass overrides it where a batch is cheaper than
    its jobs one by one.
    """

    @abstractmethod
    def run(self, resource: R) -> T: ...

    @classmethod
    def run_batch(cls, resource: R, jobs: Sequence[Self]) -> list[T | BaseException]:
        """One result or exception per job, in order; one job's failure must not fail the others."""
        results: list[T | BaseException] = []
        for job in jobs:
            try:
                results.append(job.run(resource))
            except Exception as exc:  # handed to that job's future, where its caller sees it
                results.append(exc)
        return results


class JobQueue(Protocol[R]):
    """Where the local API hands its jobs: the daemon's :class:`Worker`, or the intake of an ingress replica of
    ``lowkeyd serve``, whose jobs run side by side."""

    @property
    def resource(self) -> R | None:
        """What the jobs run on; None until it is loaded."""
        ...

    @property
    def busy(self) -> int:
        """Jobs waiting or running."""
        ...

    def has_room(self) -> bool: ...

    def submit(self, job: Job[R, T]) -> Future[T]:
        """Queue ``job``; :class:`QueueFull` when there is no room, :class:`WorkerStopped` when it takes no more."""
        ...


class Worker(Generic[R]):
    def __init__(self, load: Callable[[], R], *, queue_size: int, batch_size: int) -> None:
        self._load = load
        self._queue_size = queue_size
        self._batch_size = batch_size
        # Any: each future's result type is its own job's.
        self._waiting: collections.deque[tuple[Job[R, Any], Future[Any]]] = collections.deque()
        self._running = 0  # jobs in the batch being run
        self._changed = threading.Condition()
        self._stopping = False
        self._paused = False
        self._thread: threading.Thread | None = None
        self.resource: R | None = None

    def start(self) -> None:
        """Load the resource here (so a failure to load reaches the caller), then start serving."""
        self.resource = self._load()
        self._thread = threading.Thread(target=self._serve, name="lowkeyd-worker", daemon=True)
        self._thread.start()

    def submit(self, job: Job[R, T]) -> Future[T]:
        """Queue ``job``; its future gets the result, or the exception it raised."""
        future: Future[T] = Future()
        with self._changed:
            if self._stopping:
                raise WorkerStopped("lowkeyd is shutting down")
            if len(self._waiting) >= self._queue_size:
                raise QueueFull(f"the queue is full ({self._queue_size} photos waiting); try again later")
            self._waiting.append((job, future))
            self._changed.notify_all()
        return future

    @property
    def busy(self) -> int:
        """Jobs waiting or running."""
        with self._changed:
            return len(self._waiting) + self._running

    @property
    def alive(self) -> bool:
        """The worker thread is running: serving, or finishing a batch that :meth:`stop` gave up on."""
        return self._thread is not None and self._thread.is_alive()

    def has_room(self) -> bool:
        return self.room() > 0

    def room(self) -> int:
        """How many more jobs the queue takes now."""
        with self._changed:
            return self._queue_size - len(self._waiting)

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        """Start no new batch (the running one finishes); jobs keep queueing until :meth:`resume`."""
        with self._changed:
            self._paused = True

    def resume(self) -> None:
        with self._changed:
            self._paused = False
            self._changed.notify_all()

    def stop(self, timeout: float = 0.0) -> None:
        """Take no more jobs and cancel the waiting ones; give the running batch up to ``timeout`` seconds.

        A batch still running after that is abandoned: the thread is a daemon
        thread and dies with the process, its futures never complete.
        """
        with self._changed:
            self._stopping = True
            dropped = list(self._waiting)
            self._waiting.clear()
            self._changed.notify_all()
        for _, future in dropped:
            future.cancel()
        if self._thread is not None:
            self._thread.join(timeout)

    def _next_batch(self) -> list[tuple[Job[R, Any], Future[Any]]] | None:
        with self._changed:
            while (self._paused or not self._waiting) and not self._stopping:
                self._changed.wait()
            if self._stopping:
                return None
            first = self._waiting.popleft()
            batch = [first]
            while self._waiting and len(batch) < self._batch_size and type(self._waiting[0][0]) is type(first[0]):
                batch.append(self._waiting.popleft())
            batch = [(job, fut) for job, fut in batch if fut.set_running_or_notify_cancel()]
            self._running = len(batch)
            return batch

    def _serve(self) -> None:
        assert self.resource is not None
        while (batch := self._next_batch()) is not None:
            if not batch:
                continue
            jobs = [job for job, _ in batch]
            try:
                results = type(jobs[0]).run_batch(self.resource, jobs)
            except Exception as exc:  # run_batch itself broke: every job of the batch gets the error
                results = [exc] * len(jobs)
            for (_, future), result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
            with self._changed:
                self._running = 0


def lower_priority(nice: int, *, idle: bool) -> None:
    """Be a background process: at least ``nice``, and SCHED_IDLE on Linux when ``idle``.

    Called before any thread starts: on Linux both are per thread, and threads inherit them from their creator.
    """
    if nice and os.getpriority(os.PRIO_PROCESS, 0) < nice:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    if idle and sys.platform.startswith("linux"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError as exc:
            log.warning("cannot switch to idle CPU scheduling: %s", exc)
