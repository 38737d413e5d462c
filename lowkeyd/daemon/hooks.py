"""The publish hook: a command run for each photo published to the outbox.

It is how users hand protected photos on (``rclone copy`` to a cloud drive,
a script that posts them somewhere). The command gets the photo's outbox
path and what lowkeyd knows about it in ``LOWKEYD_*`` environment variables.

Hooks run in their own threads, so a slow upload never holds up cloaking,
and each run has a timeout after which its whole process group is killed
(a shell script's children too). Every run is recorded in the state
database: a run still pending when the daemon stops or dies is run again on
the next start (so each published photo is handed on, at least once), and
failures are what ``lowkeyd status`` shows.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import sqlite3
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowkeyd.daemon.store import Store, default_state_path
from lowkeyd.serving.jobs import Published

log = logging.getLogger(__name__)

# How much of a failed command's output is kept: enough for its error message.
_OUTPUT_TAIL = 600
PENDING, OK, FAILED = "pending", "ok", "failed"


@dataclass(frozen=True)
class HookFailure:
    output: str
    error: str
    finished: float


class HookLog(Store):
    """The record of hook runs; safe to share between threads."""

    def add(self, env: dict[str, str]) -> int:
        """A run about to be queued; it stays pending until :meth:`finish`."""
        cursor = self._write(
            "INSERT INTO hook_runs (output, env, status, queued) VALUES (?, ?, ?, ?)",
            (env["LOWKEYD_OUTPUT"], json.dumps(env), PENDING, time.time()),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def finish(self, run_id: int, *, exit_code: int | None, error: str | None) -> None:
        self._write(
            "UPDATE hook_runs SET status = ?, exit_code = ?, error = ?, finished = ? WHERE id = ?",
            (FAILED if error else OK, exit_code, error, time.time(), run_id),
        )

    def pending(self) -> list[tuple[int, dict[str, str]]]:
        rows = self._query("SELECT id, env FROM hook_runs WHERE status = ? ORDER BY id", (PENDING,))
        return [(run_id, json.loads(env)) for run_id, env in rows]

    def counts(self) -> dict[str, int]:
        rows = self._query("SELECT status, COUNT(*) FROM hook_runs GROUP BY status")
        return {OK: 0, FAILED: 0, PENDING: 0, **{status: n for status, n in rows}}

    def recent_failures(self, limit: int = 5) -> list[HookFailure]:
        rows = self._query(
            "SELECT output, error, finished FROM hook_runs WHERE status = ? ORDER BY finished DESC LIMIT ?",
            (FAILED, limit),
        )
        return [HookFailure(*row) for row in rows]


def hook_report(path: Path | None = None) -> dict[str, Any] | None:
    """What ``lowkeyd status`` shows about the publish hook; None when it never ran."""
    path = path or default_state_path()
    if not path.exists():
        return None
    hooks = HookLog(path, readonly=True)
    try:
        counts, failures = hooks.counts(), hooks.recent_failures()
    except sqlite3.OperationalError:  # read-only, from a database the daemon has not upgraded yet
        return None
    finally:
        hooks.close()
    if not any(counts.values()):
        return None
    return {
        "counts": counts,
        "recent_failures": [{"output": f.output, "error": f.error, "finished": f.finished} for f in failures],
    }


def _tail(output: bytes) -> str:
    text = output.decode("utf-8", "replace").strip()
    return text if len(text) <= _OUTPUT_TAIL else "..." + text[-_OUTPUT_TAIL:]


class PublishHook:
    """Runs ``command`` once per published photo, off the cloaking path."""

    def __init__(self, command: list[str], *, timeout: float, concurrency: int = 1, record: HookLog) -> None:
        self.command = command
        self.timeout = timeout
        self.record = record
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="lowkeyd-hook")
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen[bytes]] = set()
        self._stopping = False
        self._idle = threading.Condition(self._lock)
        self._queued = 0

    def start(self) -> None:
        """Run again what an earlier daemon left pending (it stopped or died before the hook finished)."""
        left = self.record.pending()
        if left:
            log.info("publish hook: running %d hook(s) left pending by the last run", len(left))
        for run_id, env in left:
            self._submit(run_id, env)

    def published(self, photo: Published) -> None:
        """Queue the hook for ``photo``; returns at once."""
        env = photo.environment()
        self._submit(self.record.add(env), env)

    def _submit(self, run_id: int, env: dict[str, str]) -> None:
        with self._lock:
            if self._stopping:
                return  # stays pending: the next start runs it
            self._queued += 1
        self._executor.submit(self._run, run_id, env)

    def wait_idle(self, timeout: float) -> bool:
        """True once every queued run has finished (for a clean stop, and tests)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._queued == 0, timeout)

    def stop(self, grace: float = 5.0) -> None:
        """Give running hooks ``grace`` seconds, then kill them; unfinished runs stay pending for the next start."""
        self.wait_idle(grace)
        with self._lock:
            self._stopping = True
            running = list(self._running)
        for proc in running:
            _kill_group(proc)
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _run(self, run_id: int, env: dict[str, str]) -> None:
        try:
            self._run_once(run_id, env)
        except Exception:  # a bug here must not kill the executor thread unnoticed
            log.exception("publish hook: run %d broke", run_id)
        finally:
            with self._idle:
                self._queued -= 1
                self._idle.notify_all()

    def _run_once(self, run_id: int, env: dict[str, str]) -> None:
        output = env["LOWKEYD_OUTPUT"]
        # A removal's photo is gone by design; any other event's must still be there to hand on.
        if env.get("LOWKEYD_EVENT", "published") != "removed" and not Path(output).exists():
            self._failed(run_id, output, None, "the photo is no longer in the outbox")
            return
        with self._lock:
            if self._stopping:
                return
            try:
                # Its own session, so a timeout kills the command's children too (a shell's rclone).
                proc = subprocess.Popen(
                    self.command,
                    env={**os.environ, **env},
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                self._failed(run_id, output, None, f"cannot run {self.command[0]}: {exc.strerror or exc}")
                return
            self._running.add(proc)
        start = time.monotonic()
        # A pipe with the default buffering: its read1 hands over what is there without waiting for more.
        assert isinstance(proc.stdout, io.BufferedReader)
        reader = _TailReader(proc.stdout)
        try:
            proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.wait()
            self._failed(run_id, output, None, f"timed out after {self.timeout:g} s", reader.tail())
            return
        finally:
            with self._lock:
                self._running.discard(proc)
                stopped = self._stopping
        out = reader.tail()
        if stopped and proc.returncode < 0:
            return  # killed by stop(): left pending, run again on the next start
        if proc.returncode != 0:
            self._failed(run_id, output, proc.returncode, f"exit status {proc.returncode}", out)
            return
        self.record.finish(run_id, exit_code=0, error=None)
        log.debug("publish hook for %s done in %.1f s", output, time.monotonic() - start)

    def _failed(self, run_id: int, output: str, exit_code: int | None, why: str, out: bytes = b"") -> None:
        tail = _tail(out)
        error = f"{why}: {tail}" if tail else why
        self.record.finish(run_id, exit_code=exit_code, error=error)
        log.warning("publish hook failed for %s: %s", output, error)


class _TailReader:
    """Reads a hook's output to its end in a thread, keeping only its last bytes: a chatty command costs no memory."""

    def __init__(self, stream: io.BufferedReader) -> None:
        self._stream = stream
        self._kept = b""
        self._thread = threading.Thread(target=self._read, name="lowkeyd-hook-output", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with self._stream:
            while chunk := self._stream.read1(1 << 16):
                self._kept = (self._kept + chunk)[-4 * _OUTPUT_TAIL :]

    def tail(self) -> bytes:
        """What was kept, once the output ended (its process and any child holding it open are gone)."""
        self._thread.join(5)
        return self._kept


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # it has just ended
