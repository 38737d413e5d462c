"""The daemon's worker interface over a thread pool: photos in one ingress replica run side by side.

:class:`~lowkeyd.daemon.api.LocalApi` hands its jobs to a worker (``submit``, ``has_room``,
``busy``, ``resource``). In the daemon that worker is one thread on the resident models; in
the service the models are elsewhere (the model replicas) and a job is mostly decoding,
waiting for the replicas and encoding, so many run at once: that is what lets the model
replicas batch faces from different requests. The bound is kept (a full intake is a 429).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

from lowkeyd.daemon.worker import Job, QueueFull

R = TypeVar("R")
T = TypeVar("T")


class Intake(Generic[R]):
    def __init__(self, resource: R, *, queue_size: int, concurrency: int) -> None:
        self.resource: R | None = resource
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="lowkeyd-intake")
        self._queue_size = queue_size
        self._capacity = queue_size + concurrency  # waiting plus running, as the daemon's queue and its batch
        self._count = 0
        self._lock = threading.Lock()

    def submit(self, job: Job[R, T]) -> Future[T]:
        """Run ``job`` on a free thread; :class:`QueueFull` when as many wait as the queue takes."""
        with self._lock:
            if self._count >= self._capacity:
                raise QueueFull(f"the queue is full ({self._queue_size} photos waiting); try again later")
            self._count += 1
        future = self._pool.submit(job.run, self.resource)
        future.add_done_callback(self._done)
        return future

    def _done(self, _: Future[object]) -> None:
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
