"""The daemon's run loop: watch, decide, queue, publish, report.

Threads: the watchers and a scanner feed :class:`~lowkeyd.daemon.watch.Settling`;
the main thread takes settled paths, decides from the state database what
each needs (nothing, a copy of an earlier result, or cloaking) and queues
the work; the worker thread cloaks into staging, and on completion the file
is published to the outbox and recorded. SIGTERM/SIGINT stop it cleanly: no
half-written file is ever in the outbox, and unfinished work is redone on the
next start.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from lowkeyd.daemon.candidate import inspect
from lowkeyd.daemon.config import DaemonConfig
from lowkeyd.daemon.follow import Follower
from lowkeyd.daemon.hooks import HookLog, PublishHook
from lowkeyd.daemon.pause import PublishPause
from lowkeyd.daemon.state import (
    FINISHED,
    SETTLED,
    FileKey,
    FileRecord,
    StateDB,
    Status,
)
from lowkeyd.daemon.status_page import StatusPage
from lowkeyd.daemon.system import systemd
from lowkeyd.daemon.system.notify import Notifier
from lowkeyd.daemon.watch import FolderWatcher, Settling, scan
from lowkeyd.engine.presets import stronger
from lowkeyd.errors import EngineError, LowkeydError
from lowkeyd.paths import private_folder, state_dir
from lowkeyd.photo import Photo
from lowkeyd.pipeline import HeldBelowTarget, PhotoProtector
from lowkeyd.serving.api.client import default_socket_path
from lowkeyd.serving.api.routes import JobRoot, LocalApi
from lowkeyd.serving.api.server import ApiServer, TcpListener, load_token
from lowkeyd.serving.jobs import FileJob, Protector, Published, StrongerJob, TriageJob, finish
from lowkeyd.serving.memory import pixel_limit, release_free_memory
from lowkeyd.serving.outbox import Cause, Outbox, transient_cause
from lowkeyd.serving.reading import Refused, hash_and_pixels
from lowkeyd.serving.worker import QueueFull, Worker, WorkerStopped, lower_priority

if TYPE_CHECKING:
    from lowkeyd.pipeline import Outcome

log = logging.getLogger(__name__)

TICK_SECONDS = 0.25
HEARTBEAT_SECONDS = 2.0
# While publishing is paused, how often the outbox is looked at again.
PAUSE_CHECK_SECONDS = 2.0
# Photos larger than this are read in their own lane (see Daemon.large): on a 2-core CPU one this size
# takes a few seconds to read, look at for faces and write (scripts/pixel_memory.py).
LARGE_PIXELS = 16_000_000
# A hook still running this long after a stop is killed; it is run again on the next start.
HOOK_STOP_GRACE = 2.0


class AlreadyRunning(LowkeydError):
    """Another daemon holds this state directory."""


@contextmanager
def single_instance(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s daemon lock: two daemons on one state database would cloak every photo twice."""
    fd = os.open(private_folder(folder) / "daemon.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)  # whatever the umask, or the mode an earlier version left
    with open(fd, "r+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            raise AlreadyRunning(f"another lowkeyd is already running on {folder} (pid {holder})") from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        try:
            yield
        finally:
            lock.truncate(0)


@dataclass
class _Pending:
    """A watched file handed to the worker, with what finishing it needs."""

    source: str
    rel_path: str
    key: FileKey  # the file as it was queued: if it differs afterwards, the result is stale
    job: FileJob
    pixels: int = 0  # decoded pixels it holds in the cloaking queue (see Daemon._triaged)

    @property
    def stronger(self) -> bool:
        """A held photo cloaked stronger at its user's request: put back, it stays asked for."""
        return isinstance(self.job, StrongerJob)


def load_protector(config: DaemonConfig, is_own_output: Callable[[str], bool] | None = None) -> Protector:
    """The models, loaded once for the daemon's lifetime; ``is_own_output`` as for :class:`PhotoProtector`.

    With ``remote:`` a remote service cloaks instead (the models are loaded here only for ``fallback: local``).
    """
    settings = config.protection
    if config.remote is not None:
        from lowkeyd.daemon.remote import remote_protector

        return remote_protector(
            config.remote,
            lambda preset: PhotoProtector(
                None, settings.model_copy(update={"preset": preset}),
                max_pixels=pixel_limit(settings.max_megapixels), is_own_output=is_own_output,
            ),
            lambda: _load_models(config, is_own_output),
            settings.preset,
        )
    return _load_models(config, is_own_output)


def _load_models(config: DaemonConfig, is_own_output: Callable[[str], bool] | None) -> PhotoProtector:
    """The models here (with ``remote:``, only once the remote is down and ``fallback: local``)."""
    settings = config.protection
    protector = PhotoProtector.load(settings, threads=config.work.threads, is_own_output=is_own_output)
    # Only now: the largest photo taken depends on the memory the models left.
    protector.max_pixels = pixel_limit(settings.max_megapixels)
    log.info(
        "models loaded on %s (preset %s); photos up to %.0f megapixels",
        protector.device, protector.preset.name, protector.max_pixels / 1e6,
    )
    return protector


class Daemon:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.worker: Worker[Protector] = Worker(
            # The state database (open before the worker starts) knows which contents lowkeyd published.
            lambda: load_protector(config, lambda sha256: self.state.is_own_output(sha256)),
            queue_size=config.work.queue_size, batch_size=config.work.batch_size
        )
        # The fast lane, on the same resident models: each watched photo is read here once; one that needs
        # no attack is published at once, one with a face is passed on, pixels and all, to the worker.
        self.fast: Worker[Protector] = Worker(self._loaded, queue_size=config.work.queue_size, batch_size=1)
        # Photos over LARGE_PIXELS (or whose header does not say) are read in a lane of their own: one takes
        # a minute or more, and the photos behind it in the fast lane would wait that long.
        self.large: Worker[Protector] = Worker(self._loaded, queue_size=config.work.queue_size, batch_size=1)
        self._lanes = (self.fast, self.large)
        self._queued_pixels = 0  # decoded pixels waiting in the worker's queue (under _publishing)
        self.settling = Settling(config.watch.settle_seconds, {s.name: s.path for s in config.sources})
        self.notifier = Notifier(
            enabled=config.notifications.enabled, error_interval=config.notifications.error_interval
        )
        self._stop = threading.Event()
        # Held while a result is published and recorded. Shutdown sets _stopping under it: from then
        # on a job that finishes late publishes nothing and leaves the database alone.
        self._publishing = threading.Lock()
        self._stopping = False
        self._roots = {source.name: source.path for source in config.sources}
        # What "Cloak stronger" runs on a held photo; none where a remote lowkeyd cloaks (its preset is its own).
        self.stronger = None if config.remote is not None else stronger(config.protection.preset)
        self._in_flight: dict[tuple[str, str], _Pending] = {}
        self._pause = PublishPause()
        self._started = time.time()
        self.state: StateDB
        self.outbox: Outbox
        self.hook: PublishHook | None = None
        self.api: ApiServer | None = None
        self.follower: Follower
        self.page: StatusPage | None = None

    # ---- lifecycle

    def _loaded(self) -> Protector:
        """The worker's models, for the lanes (started once the worker has loaded them)."""
        assert self.worker.resource is not None
        return self.worker.resource

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> int:
        work = self.config.work
        lower_priority(work.nice, idle=work.idle_priority)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())
        with single_instance(state_dir()):
            self.state = StateDB()
            try:
                code = self._run()
            finally:
                self.state.close()
        if self.worker.alive or any(lane.alive for lane in self._lanes):
            # A batch (or a look for faces) abandoned at shutdown is still inside torch, which aborts the
            # process if the interpreter is torn down under it. Everything is recorded and closed: leave at once.
            logging.shutdown()
            os._exit(code)
        return code

    def _run(self) -> int:
        self.outbox = Outbox(self.config.outbox, self.state)
        if left := self.outbox.clear_staging():
            log.info("removed %d unfinished file(s) an earlier run left in staging", left)
        self._forget_vanished()
        for record in self.state.interrupted():
            self._record_failure(record.source, record.rel_path, "interrupted: lowkeyd stopped while cloaking it")
        systemd.notify("STATUS=loading models")
        self.worker.start()
        if self._stop.is_set():
            return 0
        for lane in self._lanes:
            lane.start()
        self.hook = self._start_hook()
        self.api = self._start_api()
        # A deletion waits this long for the new name of a rename to settle and be recognised.
        grace = max(5.0, 3 * self.config.watch.settle_seconds)
        self.follower = Follower(
            self.config.sources, self.state, self.outbox, self._hand_on, self.config.protection.preset.name, grace=grace
        )
        watcher = FolderWatcher(self.config.sources, self.settling.add, skip=[state_dir()], on_gone=self.follower.gone)
        watcher.start()
        threading.Thread(target=self._scan_loop, name="lowkeyd-scan", daemon=True).start()
        systemd.notify("READY=1", f"STATUS={self._status_line()}")
        log.info("ready: %d source(s), outbox %s", len(self.config.sources), self.config.outbox)
        try:
            self._loop()
        finally:
            systemd.notify("STOPPING=1")
            log.info("stopping")
            watcher.stop()
            self._shutdown()
        return 0

    def _loop(self) -> None:
        watchdog = systemd.watchdog_interval()
        last_ping = last_beat = last_pause_check = 0.0
        while not self._stop.wait(TICK_SECONDS):
            # Paused on the status page (the cloaking worker): the fast lane, reading photos and looking
            # for faces, pauses with it, so new photos wait queued and nothing is published meanwhile.
            for lane in self._lanes:
                if lane.paused != self.worker.paused:
                    (lane.pause if self.worker.paused else lane.resume)()
            if self._pause.reason is not None:
                # New photos keep settling; nothing is taken until the outbox can take it.
                if time.monotonic() - last_pause_check >= PAUSE_CHECK_SECONDS:
                    last_pause_check = time.monotonic()
                    self._maybe_resume()
            else:
                # Only as many as the queue has room for: the rest keep waiting (and are not read again yet).
                # Every photo the fast lane passes on must find room in the worker's queue.
                reading = self._reading()
                room = min(*(lane.room() for lane in self._lanes), self.worker.room() - reading)
                for source, path in self.settling.take(limit=max(0, room)):
                    self._consider(source, path)
                for record in self.state.due_retries():
                    if record.source in self._roots and self.worker.room():
                        self._consider(
                            record.source, self._roots[record.source] / record.rel_path, retry=True,
                            stronger=record.status is Status.STRONGER,
                        )
                self.follower.apply_due(settled=len(self.settling) == 0 and reading == 0)
            self.notifier.flush(idle=self.worker.busy + self._reading() == 0 and len(self.settling) == 0)
            now = time.monotonic()
            if watchdog and now - last_ping >= watchdog:
                systemd.notify("WATCHDOG=1")
                last_ping = now
            if now - last_beat >= HEARTBEAT_SECONDS:
                self._forget_vanished()
                line = self._status_line()
                self.state.heartbeat(waiting=len(self.settling), message=line, started=self._started)
                systemd.notify(f"STATUS={line}")
                last_beat = now

    def _shutdown(self) -> None:
        if self.api is not None:
            self.api.stop()
        for lane in self._lanes:
            lane.stop(timeout=self.config.work.stop_grace)
        self.worker.stop(timeout=self.config.work.stop_grace)
        with self._publishing:
            self._stopping = True
            if self._in_flight:
                log.info("%d photo(s) left unfinished, to be done on the next start", len(self._in_flight))
            for pending in self._in_flight.values():
                self.outbox.discard(pending.job.staged)
                self.state.release(pending.source, pending.rel_path, stronger=pending.stronger)
            self._in_flight.clear()
        if self.hook is not None:
            self.hook.stop(grace=HOOK_STOP_GRACE)
        self.state.clear_daemon()

    def _start_hook(self) -> PublishHook | None:
        hook = self.config.on_published
        if hook is None:
            return None
        runner = PublishHook(hook.command, timeout=hook.timeout, concurrency=hook.concurrency, record=HookLog())
        runner.start()
        return runner

    def _start_api(self) -> ApiServer | None:
        api = self.config.api
        if not api.enabled:
            return None
        self.page = StatusPage(
            state=self.state, worker=self.worker, roots=self._roots, outbox=self.outbox.root, stronger=self.stronger
        )
        local = LocalApi(
            self.worker,
            self.outbox,
            queue_size=self.config.work.queue_size,
            roots=[JobRoot(root.name, root.path) for root in api.job_roots],
            max_upload_bytes=int(api.max_upload_mb * 1024 * 1024),
            timeout=api.timeout,
            preset=self.config.protection.preset,
            on_published=None if self.hook is None else self.hook.published,
            status=self._api_status,
            extra_routes=self.page.api_routes(),
        )
        tcp = None if api.tcp is None else TcpListener(api.tcp.host, api.tcp.port, load_token(api.tcp.token_file))
        server = ApiServer(
            local, socket_path=default_socket_path(), tcp=tcp, max_connections=api.max_connections, page=self.page
        )
        server.start()
        return server

    def _reading(self) -> int:
        """Photos in the lanes that read them (queued or being read)."""
        return sum(lane.busy for lane in self._lanes)

    def _api_status(self) -> dict[str, object]:
        return {
            "files": self.state.counts(),
            "hooks": None if self.hook is None else self.hook.record.counts(),
        }

    def _status_line(self) -> str:
        counts = self.state.counts()
        parts = [f"{counts.get(Status.DONE.value, 0)} done"]
        if (paused := self._pause.reason) is not None:
            parts.insert(0, f"publishing paused ({paused})")
        if busy := self.worker.busy + self._reading():
            parts.append(f"{busy} in the queue")
        if waiting := len(self.settling):
            parts.append(f"{waiting} settling")
        if failed := counts.get(Status.FAILED.value, 0):
            parts.append(f"{failed} failed")
        if held := counts.get(Status.HELD.value, 0):
            parts.append(f"{held} held")
        return ", ".join(parts)

    def _forget_vanished(self) -> None:
        """Drop queued and retrying files deleted meanwhile (while the daemon was stopped, or in a queue)."""
        # Jobs join _in_flight on this thread only; one that leaves meanwhile has recorded its file's fate.
        for record in self.state.forget_vanished(self._roots, busy=set(self._in_flight)):
            log.info("%s/%s: deleted before it was cloaked; forgotten", record.source, record.rel_path)

    def _forget_deleted(self, source: str, rel_path: str) -> None:
        """A job's file deleted while it waited or was read: nothing to publish, nothing failed."""
        self.state.forget(source, rel_path)
        log.info("%s/%s: deleted before it was cloaked; forgotten", source, rel_path)

    def _scan_loop(self) -> None:
        interval = self.config.watch.rescan_interval
        while not self._stop.is_set():
            found = 0
            for source in self.config.sources:
                for path in scan(source, skip=[state_dir()]):
                    if self._stop.is_set():
                        return
                    rel_path = path.relative_to(source.path).as_posix()
                    try:
                        if self.state.is_settled(source.name, rel_path, FileKey.of(path)):
                            continue
                    except FileNotFoundError:
                        continue
                    self.settling.add(source.name, path)
                    found += 1
                self.follower.catch_up(source)
            log.info("scan found %d photo(s) to look at", found)
            if not interval or self._stop.wait(interval):
                return

    # ---- deciding

    def _consider(self, source: str, path: Path, *, retry: bool = False, stronger: bool = False) -> None:
        """Decide what a file needs and queue it; ``stronger``: a held photo whose user asked for a stronger cloak."""
        rel = PurePosixPath(path.relative_to(self._roots[source]).as_posix())
        rel_path = str(rel)
        if (source, rel_path) in self._in_flight:
            return  # a change while it is being cloaked is caught when it finishes
        try:
            real, key = inspect(path, self._roots[source])
            record = self.state.get(source, rel_path)
            # A due retry is taken; any other look at a file waiting for its retry is not.
            if record and record.key == key and record.status in (FINISHED if retry else SETTLED):
                return
            sha256, pixels = hash_and_pixels(real)
        except FileNotFoundError:
            self.state.forget(source, rel_path)
            return
        except Refused as exc:
            self._refuse(source, rel_path, path, str(exc))
            return
        except OSError as exc:  # e.g. replaced by a link since it was inspected: looked at again on its next event
            log.warning("%s/%s: cannot read (%s)", source, rel_path, exc.strerror or exc)
            return
        dest = self.outbox.destination(source, rel)
        try:
            earlier = self.state.finished_with_hash(sha256)
            if earlier is not None and (
                self.follower.renamed(earlier, source, rel_path, key, sha256, dest)
                or self._reuse(earlier, source, rel_path, key, sha256, dest)
            ):
                return
            if stronger and self.stronger is None:
                self._record_held(source, rel_path, "no stronger cloak here (a remote lowkeyd cloaks, or the attack "
                                  "has the widest budget already)", self.config.protection.preset.name)
                return
            self.state.mark_queued(source, rel_path, key, sha256)
            staged, started = self.outbox.stage(dest), lambda: self.state.mark_processing(source, rel_path)
            job = (
                StrongerJob(real, staged, dest, source, started, preset=self.stronger)
                if stronger and self.stronger is not None
                else FileJob(real, staged, dest, source, started)
            )
        except (OSError, LowkeydError) as exc:
            if (cause := transient_cause(exc)) is None:
                raise
            self._hold(source, rel_path, key.size, cause, exc, stronger=stronger)
            return
        pending = _Pending(source, rel_path, key, job)
        # In flight before it is submitted: a job finishing at once must find itself there to leave.
        self._in_flight[(source, rel_path)] = pending
        try:
            lane = self.fast if pixels is not None and pixels <= LARGE_PIXELS else self.large
            future = lane.submit(TriageJob(job))
        except QueueFull:  # the intake is sized to the queue's room: only a race brings this; the next event brings it back
            del self._in_flight[(source, rel_path)]
            self.outbox.discard(job.staged)
            self.state.release(source, rel_path, stronger=stronger)
            return
        future.add_done_callback(lambda f: self._triaged(pending, f))

    def _refuse(self, source: str, rel_path: str, path: Path, reason: str) -> None:
        """Record and report, once, a file that will not be read (see :mod:`~lowkeyd.daemon.candidate`)."""
        try:
            key = FileKey.of(path)  # of what it leads to, as the scanner sees it: unchanged, it is not reported again
        except OSError:
            return  # a dangling link: nothing to read, nothing to say
        if self.state.is_settled(source, rel_path, key):
            return
        self.state.mark_refused(source, rel_path, key, reason)
        log.warning("%s/%s: %s", source, rel_path, reason)
        self.notifier.photo_failed(f"{source}/{rel_path}", reason)

    def _reuse(self, earlier: FileRecord, source: str, rel_path: str, key: FileKey, sha256: str, dest: Path) -> bool:
        """Finish this file with an earlier result for the same content; False when there is none to reuse."""
        output = None if earlier.output is None else Path(earlier.output)
        if output is not None and not self.outbox.holds(output):
            return False  # the published copy was deleted, or replaced by a file of the user's: cloak again
        same_file = (earlier.source, earlier.rel_path) == (source, rel_path)
        if output is not None and not same_file:
            output = self.outbox.publish_copy(output, dest.with_suffix(output.suffix))
        self.state.mark_done(
            source,
            rel_path,
            outcome=earlier.outcome or "",
            faces=earlier.faces or 0,
            faces_too_small=earlier.faces_too_small or 0,
            seconds=0.0,
            output=output,
            key=key,
            sha256=sha256,
            # always the file that was actually cloaked, not a duplicate of it
            duplicate_of=earlier.duplicate_of or (None if same_file else f"{earlier.source}/{earlier.rel_path}"),
        )
        if not same_file:
            log.info("%s/%s: same photo as %s/%s, its result reused", source, rel_path, earlier.source, earlier.rel_path)
            if output is not None:
                self._hand_on(
                    Published(
                        output, self.outbox.root, self._roots[source] / rel_path, source, earlier.outcome or "",
                        earlier.faces or 0, earlier.faces_too_small or 0, self.config.protection.preset.name, 0.0,
                    )
                )
        return True

    # ---- finishing (in the worker threads)

    def _triaged(self, pending: _Pending, future: Future[Outcome | Photo]) -> None:
        """The fast lane is done with a photo: finished there, or passed on to be cloaked."""
        photo = None if future.cancelled() or future.exception() is not None else future.result()
        if not isinstance(photo, Photo):
            self._finish(pending, future)  # an Outcome, a failure or a cancellation
            return
        with self._publishing:
            if self._stopping:
                return
            pixels = photo.rgb.shape[0] * photo.rgb.shape[1]
            limit = self.worker.resource.max_pixels if self.worker.resource else None
            # Decoded pixels wait in the queue up to one largest photo's worth; past that, the path
            # waits instead and the worker reads it again: memory stays bounded in a burst of big photos.
            if limit is None or self._queued_pixels + pixels <= limit:
                pending.job.photo, pending.pixels = photo, pixels
                self._queued_pixels += pixels
            try:
                cloaked = self.worker.submit(pending.job)
            except (QueueFull, WorkerStopped):
                self._queued_pixels -= pending.pixels
                self._in_flight.pop((pending.source, pending.rel_path), None)
                self.outbox.discard(pending.job.staged)
                self.state.release(pending.source, pending.rel_path, stronger=pending.stronger)
                self.settling.add(pending.source, self._roots[pending.source] / pending.rel_path)
                return
        cloaked.add_done_callback(lambda f: self._finish(pending, f))

    def _finish(self, pending: _Pending, future: Future[Outcome] | Future[Outcome | Photo]) -> None:
        with self._publishing:
            self._queued_pixels -= pending.pixels
            pending.pixels = 0
            if self._stopping:
                return
            try:
                outcome = self._publish(pending, future)
            finally:
                # Only now: until the result is recorded, _consider must see the file as in flight.
                self._in_flight.pop((pending.source, pending.rel_path), None)
        release_free_memory()
        if outcome is not None:
            self.notifier.photo_done(outcome.status, outcome.faces_cloaked)
            log.info("%s/%s: %s", pending.source, pending.rel_path, outcome.message)

    def _publish(self, pending: _Pending, future: Future[Outcome] | Future[Outcome | Photo]) -> Outcome | None:
        """Publish and record a finished job; None when there is nothing to publish (failed, cancelled, stale)."""
        source, rel_path, job = pending.source, pending.rel_path, pending.job
        if future.cancelled():
            self.outbox.discard(job.staged)
            self.state.release(source, rel_path, stronger=pending.stronger)
            return None
        error = future.exception()
        watched = self._roots[source] / rel_path  # job.src is resolved
        if error is not None:
            self.outbox.discard(job.staged)
            if not os.path.lexists(watched):
                self._forget_deleted(source, rel_path)
                return None
            if (cause := transient_cause(error)) is not None:
                self._hold(source, rel_path, pending.key.size, cause, error, stronger=pending.stronger)
                return None
            # A stronger cloak that cannot protect the photo either leaves it held, with the reason.
            if isinstance(error, HeldBelowTarget) or (isinstance(job, StrongerJob) and isinstance(error, EngineError)):
                preset = job.preset if isinstance(job, StrongerJob) else self.config.protection.preset
                self._record_held(source, rel_path, str(error), preset.name)
                return None
            if not isinstance(error, LowkeydError):
                log.error("%s/%s: unexpected error", source, rel_path, exc_info=error)
            self._record_failure(source, rel_path, str(error) or type(error).__name__)
            return None
        try:
            unchanged = FileKey.of(job.src) == pending.key
        except FileNotFoundError:
            unchanged = False
        if not unchanged:
            self.outbox.discard(job.staged)
            if not os.path.lexists(watched):
                self._forget_deleted(source, rel_path)
                return None
            # Written to while it was read: what was cloaked may be half a photo. Start over.
            self.state.release(source, rel_path)
            self.settling.add(source, watched)
            log.info("%s/%s changed while it was cloaked; it will be done again", source, rel_path)
            return None
        outcome = future.result()
        assert not isinstance(outcome, Photo)  # the fast lane hands a photo to the worker, never here
        published = False

        def record(written: Path | None) -> None:
            nonlocal published
            published = True  # from here on an error is the database's or the hook's, not publishing's
            self.state.mark_done(
                source,
                rel_path,
                outcome=outcome.status,
                faces=outcome.faces_cloaked,
                faces_too_small=outcome.faces_too_small,
                seconds=outcome.seconds,
                output=written,
                output_sha256=outcome.sha256,
            )
            if self.page is not None:
                self.page.record(source, rel_path, outcome)

        try:
            finish(job, outcome, self.outbox, record=record, hook=self._hand_on)
        except (OSError, LowkeydError) as exc:
            if published:
                raise
            if (cause := transient_cause(exc)) is not None:
                self._hold(source, rel_path, pending.key.size, cause, exc, stronger=pending.stronger)
            else:
                self._record_failure(source, rel_path, f"cannot publish: {exc}")
            return None
        return outcome

    def _hand_on(self, photo: Published) -> None:
        """Queue the publish hook for a photo just published; it never holds up cloaking."""
        if self.hook is not None:
            self.hook.published(photo)

    def _hold(
        self, source: str, rel_path: str, size: int, cause: Cause, error: BaseException, *, stronger: bool = False
    ) -> None:
        """Put a photo back, no attempt counted, and pause publishing: the outbox, not the photo, is at fault."""
        self.state.release(source, rel_path, stronger=stronger)
        self.settling.add(source, self._roots[source] / rel_path)
        reason = {"space": "the outbox's disk is full", "missing": str(error)}.get(cause) or f"cannot write: {error}"
        # Twice the source's size: a re-encoded photo can come out larger than it went in.
        if self._pause.hold(reason, cause=cause, free=self.outbox.free_bytes(), needed=2 * size):
            message = f"publishing paused, no photo is lost: {reason}; it goes on by itself once that is fixed"
            log.warning("%s", message)
            self.notifier.alert("lowkeyd: publishing paused", message)

    def _maybe_resume(self) -> None:
        if self._pause.may_resume(unavailable=self.outbox.unavailable() is not None, free=self.outbox.free_bytes()):
            log.info("publishing resumed (%s no more)", self._pause.reason)
            self._pause.resume()

    def _record_held(self, source: str, rel_path: str, reason: str, preset: str) -> None:
        """Keep a photo back, unpublished, until its user asks for a stronger cloak (the status page offers one)."""
        self.state.mark_held(source, rel_path, reason, preset=preset)
        log.warning("%s/%s: %s", source, rel_path, reason)
        self.notifier.photo_held(f"{source}/{rel_path}", reason)

    def _record_failure(self, source: str, rel_path: str, error: str) -> None:
        retry = self.config.retry
        record = self.state.mark_failure(
            source, rel_path, error, max_attempts=retry.max_attempts, backoff_seconds=retry.backoff_seconds
        )
        if record.status is Status.FAILED:
            log.error("%s/%s failed %d time(s), giving up: %s", source, rel_path, record.attempts, error)
            self.notifier.photo_failed(f"{source}/{rel_path}", error)
        else:
            log.warning("%s/%s: %s (attempt %d, retrying)", source, rel_path, error, record.attempts)
