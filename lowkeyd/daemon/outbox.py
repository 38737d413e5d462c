"""The outbox: where cloaked photos are published, mirroring each source's folders.

``<outbox>/<source name>/<path in the source>``. Nothing half-written may
ever appear there, because a sync client shares the outbox and would upload
it: each photo is written in a staging folder on the outbox's file system (so
publishing is one atomic rename) and renamed into place only when complete.
Staging is kept out of the synced tree: in the state dir when that shares the
outbox's file system, else beside the outbox, and inside it only when the
outbox is the root of its file system. Whatever a crash leaves in staging is
deleted on the next start.

An outbox that disappears (an unmounted drive: its folder is then missing, or
is a plain folder on the file system below) is never written to: publishing
raises :class:`OutboxUnavailable` until it is back.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path, PurePath

from lowkeyd.daemon.config import is_within
from lowkeyd.daemon.pause import Cause
from lowkeyd.errors import LowkeydError
from lowkeyd.paths import state_dir
from lowkeyd.photo.atomic import fsync_directory

# Hidden, so the daemon's own watcher and most sync clients leave it alone (and the shipped ignore lists name it).
STAGING_NAME = ".lowkeyd-staging"


class OutboxUnavailable(LowkeydError):
    """The outbox is missing or no longer the file system it was: nothing can be published now."""


def _staging_folder(root: Path) -> Path:
    device = root.stat().st_dev
    own = state_dir() / "staging"
    own.mkdir(parents=True, exist_ok=True)
    if own.stat().st_dev == device:
        return own
    beside = root.parent / STAGING_NAME
    if root.parent != root and root.parent.stat().st_dev == device and os.access(root.parent, os.W_OK):
        return beside
    return root / STAGING_NAME


class Outbox:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        # A drive's own folder: unmounted, it is still there, but on the file system below.
        self._mount_point = root.stat().st_dev != root.parent.stat().st_dev
        self.staging = _staging_folder(root)
        self.staging.mkdir(exist_ok=True)
        self._legacy_staging = root / STAGING_NAME  # where earlier versions staged: cleared, never used again

    def unavailable(self) -> str | None:
        """Why nothing can be published now, or None."""
        try:
            if self.root.stat().st_dev == self.root.parent.stat().st_dev and self._mount_point:
                return f"the outbox {self.root} is not mounted"
            self.staging.mkdir(exist_ok=True)  # a drive mounted again comes back without it
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

    def publish(self, staged: Path, dest: Path) -> Path:
        """Atomically move a finished staged file to ``dest``, replacing what was there."""
        self._require()
        self._make_folders(dest)
        os.replace(staged, dest)
        fsync_directory(dest.parent)
        shutil.rmtree(staged.parent, ignore_errors=True)
        return dest

    def move(self, published: Path, dest: Path) -> Path:
        """Atomically move an already published photo to ``dest`` (its original was renamed)."""
        self._require()
        self._make_folders(dest)
        os.replace(published, dest)
        fsync_directory(dest.parent)
        fsync_directory(published.parent)
        return dest

    def remove(self, published: Path) -> bool:
        """Delete a photo lowkeyd published (its original was deleted); False when it is not there (any more)."""
        self._require()
        if not is_within(published, self.root) or published.is_symlink() or not published.is_file():
            return False
        published.unlink()
        fsync_directory(published.parent)
        return True

    def _make_folders(self, dest: Path) -> None:
        # Only below the root: the root itself is never created again here (it may be an unmounted drive's).
        for folder in reversed([p for p in dest.parents if self.root in p.parents]):
            folder.mkdir(exist_ok=True)

    def discard(self, staged: Path) -> None:
        shutil.rmtree(staged.parent, ignore_errors=True)

    def publish_copy(self, existing: Path, dest: Path) -> Path:
        """Publish a copy of an already published photo (the same photo under another name)."""
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
