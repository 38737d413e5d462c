"""The outbox: where cloaked photos are published, mirroring each source's folders.

``<outbox>/<source name>/<path in the source>``. Nothing half-written may
ever appear there, because a sync client shares the outbox and would upload
it: each photo is written in a staging folder outside the outbox (on the same
file system, so publishing is one atomic rename) and renamed into place only
when complete. Whatever a crash leaves in staging is deleted on the next start.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path, PurePath

from lowkeyd.paths import state_dir
from lowkeyd.photo.atomic import fsync_directory

# Used only when the state dir is on another file system than the outbox (a rename cannot cross them);
# hidden, so the daemon's own watcher and most sync clients leave it alone.
STAGING_NAME = ".lowkeyd-staging"


class Outbox:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        staging = state_dir() / "staging"
        staging.mkdir(parents=True, exist_ok=True)
        if staging.stat().st_dev != root.stat().st_dev:
            staging = root / STAGING_NAME
            staging.mkdir(exist_ok=True)
        self.staging = staging

    def destination(self, source: str, rel_path: PurePath) -> Path:
        return self.root / source / rel_path

    def stage(self, dest: Path) -> Path:
        """A path to write ``dest``'s content to first: its own folder, so nothing there can collide."""
        folder = self.staging / uuid.uuid4().hex
        folder.mkdir()
        return folder / dest.name

    def publish(self, staged: Path, dest: Path) -> Path:
        """Atomically move a finished staged file to ``dest``, replacing what was there."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, dest)
        fsync_directory(dest.parent)
        shutil.rmtree(staged.parent, ignore_errors=True)
        return dest

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
        """Delete what interrupted jobs left in staging; returns how many were left."""
        leftovers = list(self.staging.iterdir())
        for entry in leftovers:
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        return len(leftovers)
