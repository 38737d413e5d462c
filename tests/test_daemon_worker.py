"""The resident worker: one loaded resource, a bounded queue, bursts handed over as batches."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from lowkeyd.errors import LowkeydError
from lowkeyd.serving.worker import Job, QueueFull, Worker, WorkerStopped


@dataclass
class Resource:
    """Stands for the models: counts how often it was loaded and what it was asked."""

    loads: int = 0
    batches: list[list[int]] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)


@dataclass
class Square(Job[Resource, int]):
    n: int

    def run(self, resource: Resource) -> int:
        if self.n < 0:
            raise LowkeydError(f"{self.n} is negative")
        return self.n * self.n

    @classmethod
    def run_batch(cls, resource: Resource, jobs: Sequence[Square]) -> list[int | BaseException]:
        resource.batches.append([j.n for j in jobs])
        return super().run_batch(resource, jobs)


@dataclass
class Hold(Job[Resource, str]):
    """Runs until the resource's gate opens: keeps the worker busy while a test fills the queue."""

    started: threading.Event = field(default_factory=threading.Event)

    def run(self, resource: Resource) -> str:
        self.started.set()
        resource.gate.wait(10)
        return "released"


def _worker(queue_size: int = 8, batch_size: int = 4) -> tuple[Worker[Resource], Resource]:
    resource = Resource()

    def load() -> Resource:
        resource.loads += 1
        return resource

    worker = Worker(load, queue_size=queue_size, batch_size=batch_size)
    worker.start()
    return worker, resource


def test_jobs_waiting_together_run_as_one_batch() -> None:
    worker, resource = _worker(queue_size=8, batch_size=4)
    hold = Hold()
    held = worker.submit(hold)
    assert hold.started.wait(5)
    futures = [worker.submit(Square(n)) for n in (1, 2, -3, 4, 5, 6)]
    assert worker.busy == 7
    resource.gate.set()
    assert held.result(5) == "released"
    results: list[int | str] = []
    for future in futures:
        try:
            results.append(future.result(5))
        except LowkeydError as exc:
            results.append(str(exc))
    assert results == [1, 4, "-3 is negative", 16, 25, 36]
    # a burst is split at batch_size; a failing job does not fail its batch
    assert resource.batches == [[1, 2, -3, 4], [5, 6]]
    assert resource.loads == 1
    worker.stop(timeout=5)


def test_a_full_queue_refuses_instead_of_piling_up() -> None:
    worker, resource = _worker(queue_size=2, batch_size=1)
    hold = Hold()
    worker.submit(hold)
    assert hold.started.wait(5)
    worker.submit(Square(1))
    worker.submit(Square(2))
    assert not worker.has_room() and worker.room() == 0
    with pytest.raises(QueueFull, match="queue is full"):
        worker.submit(Square(3))
    resource.gate.set()
    worker.stop(timeout=5)


def test_stop_cancels_waiting_jobs_and_refuses_new_ones() -> None:
    worker, resource = _worker()
    hold = Hold()
    running = worker.submit(hold)
    assert hold.started.wait(5)
    waiting = worker.submit(Square(2))
    worker.stop(timeout=0.2)  # the running job outlives the grace period: abandoned, not waited for
    assert waiting.cancelled()
    assert not running.done()
    with pytest.raises(WorkerStopped):
        worker.submit(Square(1))
    resource.gate.set()


def test_a_failure_to_load_reaches_the_caller() -> None:
    def load() -> Resource:
        raise LowkeydError("weights missing")

    worker: Worker[Resource] = Worker(load, queue_size=1, batch_size=1)
    with pytest.raises(LowkeydError, match="weights missing"):
        worker.start()


def test_background_priority_is_applied_to_later_threads() -> None:
    # In a child process: priorities cannot be raised back, and must not leak into the test run.
    code = """
import os, threading
from lowkeyd.serving.worker import lower_priority
lower_priority(7, idle=True)
out = {}
def probe():
    out['nice'] = os.getpriority(os.PRIO_PROCESS, 0)
    out['policy'] = os.sched_getscheduler(0)
t = threading.Thread(target=probe); t.start(); t.join()
print(out['nice'], out['policy'] == os.SCHED_IDLE)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    nice, idle = done.stdout.split()
    assert int(nice) >= 7
    assert idle == ("True" if sys.platform.startswith("linux") else "False")
