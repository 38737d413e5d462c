"""Which files in a watched folder are photos to cloak, and which are someone's work in progress.

Sync clients and phones write a photo under a temporary name and rename it
when it is complete, and keep their own bookkeeping next to the photos. None
of that may be cloaked (an incomplete file would be published half-cloaked
or fail). Hidden names cover most of them:

* Syncthing ``.syncthing.*.tmp``, ``.stfolder``, ``.stversions``
* Nextcloud/ownCloud ``.<name>.~<hex>``, ``.sync_*.db*``, ``.owncloudsync.log``
* Android ``.pending-*``, ``.trashed-*``; iCloud ``.*.icloud``; macOS ``._*``, ``.DS_Store``
* lowkeyd's own ``.lowkeyd-staging``

and the rest are named here: Syncthing's ``~syncthing~*.tmp`` and conflict
copies, partial downloads (``*.part``, ``*.partial``, ...), NAS thumbnail and
recycle folders, and sidecars (``.xmp``, ``.json``, ``.aae``) that are not
photos anyway.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import PurePath

from lowkeyd.daemon.config import SourceConfig
from lowkeyd.photo.formats import is_photo_path

_IGNORED_NAMES = (
    "~syncthing~*.tmp",
    "*.sync-conflict-*",
    "*.part",
    "*.partial",
    "*.crdownload",
    "*.download",
    "*.tmp",
    "*.xmp",
    "*.json",
    "*.aae",
    "thumbs.db",
    "desktop.ini",
)
_IGNORED_FOLDERS = ("@eadir", "#recycle", "#snapshot", "$recycle.bin", "lost+found")


def _ignored_part(part: str, *, folder: bool) -> bool:
    if part.startswith("."):
        return True
    lowered = part.lower()
    patterns = _IGNORED_FOLDERS if folder else _IGNORED_NAMES
    return any(fnmatchcase(lowered, pattern) for pattern in patterns)


def is_ignored_folder(name: str) -> bool:
    """A folder whose whole subtree belongs to a sync client, a NAS or lowkeyd itself."""
    return _ignored_part(name, folder=True)


def is_sync_artifact(relative: PurePath) -> bool:
    """A temporary, bookkeeping or sidecar file, or anything inside an ignored folder."""
    *folders, name = relative.parts
    return any(is_ignored_folder(f) for f in folders) or _ignored_part(name, folder=False)


def _glob_matches(relative: PurePath, pattern: str) -> bool:
    target = relative.as_posix() if "/" in pattern else relative.name
    return fnmatchcase(target, pattern)


class SourceFilter:
    """Decides, for a path relative to one source, whether it is a photo the daemon should cloak."""

    def __init__(self, source: SourceConfig) -> None:
        self._source = source

    def wants(self, relative: PurePath) -> bool:
        source = self._source
        if not relative.parts or is_sync_artifact(relative) or not is_photo_path(relative):
            return False
        if not source.recursive and len(relative.parts) > 1:
            return False
        if source.include and not any(_glob_matches(relative, p) for p in source.include):
            return False
        return not any(_glob_matches(relative, p) for p in source.exclude)
