"""The outbox: where cloaked photos are published, mirroring each source's folders.

``<outbox>/<source name>/<path in the source>``. Nothing half-written may
ever appear there, because a sync client shares the outbox and would upload
it: each photo is written in a staging folder on the outbox's file system (so
publishing is one atomic rename) and renamed into place only when complete.
Staging is kept out of the synced tree: in the state dir when that shares the
outbox's file system and mount, else beside the outbox, and inside it only
when the outbox is the root of its file system or mount. Whatever a crash leaves in staging is
deleted on the next start.

The user may keep files of their own in the outbox, or put one in place of a
published copy. lowkeyd keeps, in the state database, the size and content
hash of every file it has there, and replaces, moves or removes a file only
while it still has that content (:meth:`Outbox.holds`). The content rather than
the inode or mtime: a sync client that downloads the same bytes again, or a
``touch``, leaves the copy lowkeyd's, while any change to what it shows does
not. A name taken by a file lowkeyd did not write is left to it: the copy is
published beside it as ``name (lowkeyd 2).jpg``, so the photo still reaches
the sync client and nothing of the user's is lost.

An outbox that disappears (an unmounted drive: its folder is then missing, or
is a plain folder on the file system below) is never written to: publishing
raises :class:`OutboxUnavailable` until it is back.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePath
from typing import Literal, Protocol

from lowkeyd.errors import LowkeydError
from lowkeyd.paths import is_within, private_folder, state_dir
from lowkeyd.photo.atomic import fsync_directory
from lowkeyd.serving.mounts import is_mount_point, same_mount
from lowkeyd.serving.reading import content_hash

log = logging.getLogger(__name__)

# Hidden, so the daemon's own watcher and most sync clients leave it alone (and the shipped ignore lists name it).
STAGING_NAME = ".lowkeyd-staging"


# What held publishing back, which says what lets it go on: room, the outbox back, or time.
Cause = Literal["space", "missing", "error"]


class Copy(Protocol):
    """What lowkeyd wrote at a path in the outbox."""

    @property
    def size(self) -> int | None: ...

    @property
    def sha256(self) -> str | None: ...


class Ledger(Protocol):
    """Where the outbox keeps what lowkeyd has in it (the daemon's state database)."""

    def published_at(self, path: Path) -> Copy | None: ...

    def is_own_output(self, sha256: str) -> bool: ...

    def record_published(self, path: Path, size: int, sha256: str, *, wanted: Path | None, moved_from: Path | None) -> None: ...

    def forget_published(self, path: Path) -> None: ...


class OutboxUnavailable(LowkeydError):
    """The outbox is missing or no longer the file system it was: nothing can be published now."""


def _staging_folder(root: Path) -> Path:
    own = private_folder(state_dir() / "staging")
    if same_mount(own, root):
        return own
    beside = root.parent / STAGING_NAME
    if root.parent != root and same_mount(root.parent, root) and os.access(root.parent, os.W_OK):
        return beside
    return root / STAGING_NAME


# What os.link raises on a file system without hard links (FAT, exFAT, some FUSE mounts).
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK})


def aside_names(dest: Path) -> Iterator[Path]:
    """``dest``, then the names its copy takes when a file lowkeyd did not write has it: ``a (lowkeyd 2).jpg``..."""
    yield dest
    for n in itertools.count(2):
        yield dest.with_name(f"{dest.stem} (lowkeyd {n}){dest.suffix}")


def _claim(src: Path, dest: Path) -> bool:
    """Move ``src`` to ``dest`` only if nothing is there; False when something is."""
    try:
        os.link(src, dest)  # fails if dest exists, however late it appeared: nothing is ever overwritten
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        # Without hard links: looked at, then renamed. Only a file put there in that instant is lost.
        if os.path.lexists(dest):
            return False
        os.replace(src, dest)
        return True
    os.unlink(src)
    return True


class Outbox:
    def __init__(self, root: Path, ledger: Ledger | None = None) -> None:
        """``ledger`` keeps what lowkeyd has in the outbox; without one it takes no file there for its own."""
        self.root = root
        self._ledger = ledger
        root.mkdir(parents=True, exist_ok=True)
        # A drive's own folder (or a bind mount): unmounted, it is still there, but on the file system below.
        self._mount_point = is_mount_point(root)
        self.staging = _staging_folder(root)
        self.staging.mkdir(mode=0o700, exist_ok=True)
        self._legacy_staging = root / STAGING_NAME  # where earlier versions staged: cleared, never used again

    def unavailable(self) -> str | None:
        """Why nothing can be published now, or None."""
        try:
            self.root.stat()
            if self._mount_point and not is_mount_point(self.root):
                return f"the outbox {self.root} is not mounted"
            self.staging.mkdir(mode=0o700, exist_ok=True)  # a drive mounted again comes back without it
        except FileNotFoundError:
            return f"the outbox {self.root} is missing (unmounted?)"
        except OSError as exc:
            return f"the outbox {self.root} cannot be written ({exc.strerror or exc})"
        return None

    def free_bytes(self) -> int:
        """Space left for publishing (0 while the outbox is unavailable)."""
        try:
            st = os.statvfs(self.staging)
        except OSError:
            return 0
        return st.f_bavail * st.f_frsize

    def _require(self) -> None:
        if (why := self.unavailable()) is not None:
            raise OutboxUnavailable(why)

    def destination(self, source: str, rel_path: PurePath) -> Path:
        return self.root / source / rel_path

    def stage(self, dest: Path) -> Path:
        """A path to write ``dest``'s content to first: its own folder, so nothing there can collide."""
        self._require()
        folder = self.staging / uuid.uuid4().hex
        folder.mkdir()
        return folder / dest.name

    def holds(self, path: Path) -> bool:
        """Whether the file at ``path`` is still the one lowkeyd published there."""
        copy = None if self._ledger is None else self._ledger.published_at(path)
        if copy is None or not is_within(path, self.root):
            return False
        try:
            if copy.size is not None and os.lstat(path).st_size != copy.size:
                return False
            digest = content_hash(path)  # refuses a link, a FIFO or a folder put there
        except (OSError, LowkeydError):
            return False
        assert self._ledger is not None
        return digest == copy.sha256 or (copy.sha256 is None and self._ledger.is_own_output(digest))

    def foreign(self, path: Path) -> bool:
        """Whether something lowkeyd did not write (or no longer recognises) is at ``path``."""
        return os.path.lexists(path) and not self.holds(path)

    def _place(self, src: Path, dest: Path, *, moved_from: Path | None = None) -> Path:
        """Move ``src`` (lowkeyd's) to ``dest``, or beside it when a file lowkeyd did not write is there; the path used."""
        self._make_folders(dest)
        size, digest = os.stat(src).st_size, content_hash(src)
        for candidate in aside_names(dest):
            if self.holds(candidate):
                os.replace(src, candidate)  # an earlier copy of lowkeyd's: replaced at once
            elif not _claim(src, candidate):
                continue
            elif candidate != dest:
                log.warning(
                    "%s is not a file lowkeyd wrote: it is left alone, and lowkeyd's copy is published as %s",
                    dest, candidate.name,
                )
            if self._ledger is not None:
                self._ledger.record_published(
                    candidate, size, digest, wanted=None if candidate == dest else dest, moved_from=moved_from
                )
            fsync_directory(candidate.parent)
            return candidate
        raise AssertionError("aside_names never ends")

    def publish(self, staged: Path, dest: Path) -> Path:
        """Atomically move a finished staged file to ``dest`` (beside it, when that is not lowkeyd's); the path used."""
        self._require()
        placed = self._place(staged, dest)
        shutil.rmtree(staged.parent, ignore_errors=True)
        return placed

    def move(self, published: Path, dest: Path) -> Path | None:
        """Atomically move an already published photo to ``dest`` (its original was renamed); the path used.

        None, and nothing moved, when ``published`` is no longer the file lowkeyd wrote there.
        """
        self._require()
        if not self.holds(published):
            self._let_go(published)
            return None
        placed = self._place(published, dest, moved_from=published)
        fsync_directory(published.parent)
        return placed

    def remove(self, published: Path) -> bool:
        """Delete a photo lowkeyd published (its original was deleted).

        False when it is not there any more, or is no longer the file lowkeyd wrote there (which is left alone).
        """
        self._require()
        if not self.holds(published):
            self._let_go(published)
            return False
        published.unlink()
        self._let_go(published)
        fsync_directory(published.parent)
        return True

    def _let_go(self, path: Path) -> None:
        """lowkeyd has no copy at ``path`` any more (removed, or replaced by someone else's file)."""
        if self._ledger is not None:
            self._ledger.forget_published(path)

    def _make_folders(self, dest: Path) -> None:
        # Only below the root: the root itself is never created again here (it may be an unmounted drive's).
        for folder in reversed([p for p in dest.parents if self.root in p.parents]):
            folder.mkdir(exist_ok=True)

    def discard(self, staged: Path) -> None:
        shutil.rmtree(staged.parent, ignore_errors=True)

    def publish_copy(self, existing: Path, dest: Path) -> Path:
        """Publish a copy of a photo lowkeyd holds (see :meth:`holds`) under another name; the path used."""
        staged = self.stage(dest)
        try:
            shutil.copy2(existing, staged)
        except BaseException:
            self.discard(staged)
            raise
        return self.publish(staged, dest)

    def clear_staging(self) -> int:
        """Delete what interrupted jobs left in staging (and an earlier version's staging in the outbox)."""
        leftovers = list(self.staging.iterdir())
        for entry in leftovers:
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        if self._legacy_staging != self.staging and self._legacy_staging.is_dir():
            shutil.rmtree(self._legacy_staging, ignore_errors=True)
        return len(leftovers)


# Write failures that pass once the disk has room or the drive is back: the photo is kept, not failed.
TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EBUSY, errno.ENODEV})


def transient_cause(exc: BaseException) -> Cause | None:
    """What a failure to publish says about the outbox (full, missing, failing), or None: then it is the photo's."""
    if isinstance(exc, OutboxUnavailable):
        return "missing"
    code = getattr(exc, "errno", None)
    if not isinstance(exc, (OSError, LowkeydError)) or code not in TRANSIENT_ERRNOS:
        return None
    return "space" if code in (errno.ENOSPC, errno.EDQUOT) else "error"
