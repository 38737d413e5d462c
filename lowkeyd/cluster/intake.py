"""A :class:`~lowkeyd.serving.worker.JobQueue` over a thread pool: photos in one ingress replica run side by side.

:class:`~lowkeyd.serving.api.LocalApi` hands its jobs to a job queue. In the daemon that is
one worker thread on the resident models; in
the service the models are elsewhere (the model replicas) and a job is mostly decoding,
waiting for the replicas and encoding, so many run at once: that is what lets the model
replicas batch faces from different requests. The bound is kept (a full intake is a 429).

Only the waiting overlaps: a job holds :attr:`Intake.native` while it runs, and lets go of it
only while it waits for the model replicas (:func:`released`). The photo libraries' native code
(libjpeg, exiv2, libheif, imagecodecs) was never run from several threads at once in the
daemon, and in the service it was: an ingress replica aborted with "double free or
corruption" inside libjpeg's marker reading while batched answers were re-encoded together.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from lowkeyd.serving.worker import Job, QueueFull

R = TypeVar("R")
T = TypeVar("T")


class Intake(Generic[R]):
    def __init__(self, resource: R, *, native: threading.Lock, queue_size: int, concurrency: int) -> None:
        """``native``: the lock on photo decoding and encoding, which ``resource`` lets go of while it waits."""
        self.resource = resource
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="lowkeyd-intake")
        self._queue_size = queue_size
        self._capacity = queue_size + concurrency  # waiting plus running, as the daemon's queue and its batch
        self._count = 0
        self._lock = threading.Lock()
        self.native = native  # decoding and encoding: one job at a time (see the module's docstring)

    def submit(self, job: Job[R, T]) -> Future[T]:
        """Run ``job`` on a free thread; :class:`QueueFull` when as many wait as the queue takes."""
        with self._lock:
            if self._count >= self._capacity:
                raise QueueFull(f"the queue is full ({self._queue_size} photos waiting); try again later")
            self._count += 1
        future = self._pool.submit(self._run, job)
        future.add_done_callback(self._done)
        return future

    def _run(self, job: Job[R, T]) -> T:
        with self.native:
            return job.run(self.resource)

    def _done(self, _: Future[Any]) -> None:
        with self._lock:
            self._count -= 1

    @property
    def busy(self) -> int:
        """Jobs waiting or running."""
        with self._lock:
            return self._count

    def room(self) -> int:
        with self._lock:
            return self._capacity - self._count

    def has_room(self) -> bool:
        return self.room() > 0


@contextlib.contextmanager
def released(lock: threading.Lock) -> Iterator[None]:
    """Let go of ``lock``, held by this thread, for the duration (a wait other jobs may overlap)."""
    lock.release()
    try:
        yield
    finally:
        lock.acquire()
