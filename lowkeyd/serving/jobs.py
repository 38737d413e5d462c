"""The work the daemon hands its resident models, and what happens to a photo once it is cloaked.

The watched folders and the local API queue the same jobs on the same
:class:`~lowkeyd.serving.worker.Worker`; :func:`finish` is the one way a
cloaked file reaches the outbox and the publish hook, whoever asked for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

from lowkeyd.errors import EngineError
from lowkeyd.photo import Photo
from lowkeyd.serving.outbox import Outbox
from lowkeyd.serving.worker import Job

if TYPE_CHECKING:
    from lowkeyd.engine.presets import Preset
    from lowkeyd.errors import LowkeydError
    from lowkeyd.pipeline import Outcome


class Protector(Protocol):
    """What the jobs run on: a :class:`~lowkeyd.pipeline.PhotoProtector` (on the daemon's resident models, or
    on the model replicas of ``lowkeyd serve``), or the daemon's protector that has a remote lowkeyd cloak."""

    @property
    def max_pixels(self) -> int | None:
        """The largest photo it takes, in pixels (None: the photo layer's own limit)."""
        ...

    @property
    def device(self) -> str:
        """Where the attack runs, in words."""
        ...

    def read(self, src: Path, *, follow_symlinks: bool = True) -> Photo: ...

    def protect_without_attack(self, photo: Photo, dest: Path) -> Outcome | None:
        """Write ``photo`` to ``dest`` when it needs no attack; None when it needs one."""
        ...

    def protect_files(
        self, jobs: Sequence[tuple[Path | Photo, Path]], *, follow_symlinks: bool = True
    ) -> list[Outcome | LowkeydError]: ...

    def protect_bytes(self, data: bytes) -> tuple[bytes | None, Outcome]: ...


@dataclass(frozen=True)
class Published:
    """A photo that has just appeared in the outbox, and where it came from."""

    output: Path
    outbox: Path
    source: Path  # the original photo
    source_name: str  # the name of its source (or API job root) in the config
    status: str  # the pipeline's outcome: cloaked, no_face or already_cloaked
    faces: int
    faces_too_small: int
    preset: str
    seconds: float
    # published, removed (the original was deleted: ``output`` is gone) or renamed (from ``previous``).
    event: str = "published"
    previous: Path | None = None

    def environment(self) -> dict[str, str]:
        env = {
            "LOWKEYD_EVENT": self.event,
            "LOWKEYD_OUTPUT": str(self.output),
            "LOWKEYD_OUTPUT_REL": self.output.relative_to(self.outbox).as_posix(),
            "LOWKEYD_OUTBOX": str(self.outbox),
            "LOWKEYD_SOURCE": str(self.source),
            "LOWKEYD_SOURCE_NAME": self.source_name,
            "LOWKEYD_STATUS": self.status,
            "LOWKEYD_FACES": str(self.faces),
            "LOWKEYD_FACES_TOO_SMALL": str(self.faces_too_small),
            "LOWKEYD_PRESET": self.preset,
            "LOWKEYD_SECONDS": f"{self.seconds:.3f}",
        }
        if self.previous is not None:
            env["LOWKEYD_PREVIOUS_OUTPUT"] = str(self.previous)
            env["LOWKEYD_PREVIOUS_OUTPUT_REL"] = self.previous.relative_to(self.outbox).as_posix()
        return env


@dataclass
class FileJob(Job["Protector", "Outcome"]):
    """Cloak one source file into a staging path; :func:`finish` publishes it to ``dest`` once it is complete.

    A burst of them is one :meth:`Protector.protect_files` call, so the
    faces of several photos share the engine's batches. ``photo``, when the
    fast lane has already decoded the file, is used instead of reading it again.
    """

    src: Path  # resolved
    staged: Path
    dest: Path  # where in the outbox it is published (the name's suffix is the written file's)
    source_name: str  # the watched source or API job root it comes from
    on_start: Callable[[], None] | None = None
    photo: Photo | None = None

    def run(self, resource: Protector) -> Outcome:
        result = self.run_batch(resource, [self])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    @classmethod
    def run_batch(cls, resource: Protector, jobs: Sequence[FileJob]) -> list[Outcome | BaseException]:
        sources: list[Path | Photo] = []
        for job in jobs:
            if job.on_start is not None:
                job.on_start()
            sources.append(job.photo or job.src)
            job.photo = None  # the pixels live as long as this batch, not as long as the job
        # Sources are resolved paths (a watched file's, or a job root's): one that became a link since is refused.
        return list(resource.protect_files(list(zip(sources, [job.staged for job in jobs], strict=True)), follow_symlinks=False))


@dataclass(kw_only=True)
class StrongerJob(FileJob):
    """A held photo its user asked to cloak with ``preset``, a wider budget than the daemon's own.

    Published within that budget even where a face stays short of the target: they asked for it,
    knowing why the photo was held. A face any member still matches is refused all the same.
    """

    preset: Preset

    @classmethod
    def run_batch(cls, resource: Protector, jobs: Sequence[FileJob]) -> list[Outcome | BaseException]:
        from lowkeyd.pipeline import PhotoProtector

        if not isinstance(resource, PhotoProtector):  # a remote cloaks with its own preset: nothing to widen here
            return [EngineError("cloaking stronger needs the models here") for _ in jobs]
        # Asked for one photo at a time: each on a protector of its own preset, sharing the resident models.
        # The worker batches jobs of one class only.
        return [
            FileJob.run_batch(resource.with_preset(job.preset, below_target="publish"), [job])[0]
            for job in cast("Sequence[StrongerJob]", jobs)
        ]


@dataclass
class TriageJob(Job["Protector", "Outcome | Photo"]):
    """The fast lane: read a watched photo once and write it at once when it needs no attack.

    Returns the outcome, or the decoded photo when it has a face to cloak (for a :class:`FileJob`).
    """

    job: FileJob

    def run(self, resource: Protector) -> Outcome | Photo:
        if self.job.on_start is not None:
            self.job.on_start()
        photo = resource.read(self.job.src, follow_symlinks=False)
        return resource.protect_without_attack(photo, self.job.staged) or photo


@dataclass
class BytesJob(Job["Protector", "tuple[bytes | None, Outcome]"]):
    """Cloak a photo given as bytes; the result is bytes in the same format (None when the no-face policy skips it)."""

    data: bytes

    def run(self, resource: Protector) -> tuple[bytes | None, Outcome]:
        return resource.protect_bytes(self.data)


def finish(
    job: FileJob,
    outcome: Outcome,
    outbox: Outbox,
    *,
    record: Callable[[Path | None], None] | None = None,
    hook: Callable[[Published], None] | None = None,
) -> Path | None:
    """Publish a cloaked job's file to the outbox (or discard its staging file when nothing was written) and hand it on.

    Returns the published path, None when nothing was published (the no-face policy skipped the photo).
    ``record`` is told that path before ``hook`` gets the photo: a crash between the two redoes a
    recorded photo's hook rather than announcing a photo nothing recorded. What publishing raises
    (OSError, LowkeydError) reaches the caller, the staging file discarded.
    """
    written = None
    try:
        if outcome.written is not None:
            written = outbox.publish(outcome.written, job.dest.with_name(outcome.written.name))
    finally:
        if written is None:
            outbox.discard(job.staged)
    if record is not None:
        record(written)
    if written is not None and hook is not None:
        hook(
            Published(
                written, outbox.root, job.src, job.source_name, outcome.status, outcome.faces_cloaked,
                outcome.faces_too_small, outcome.preset.name, outcome.seconds,
            )
        )
    return written
