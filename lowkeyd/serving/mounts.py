"""Is a folder a mount point? As findmnt answers it: listed as one in the kernel's mount table.

Comparing a folder's device with its parent's misses a bind mount from the same
file system (both sides have one device), which is how containers and some
setups hand a drive's folder over. Linux lists every mount in
``/proc/self/mountinfo`` (proc(5)); elsewhere :func:`os.path.ismount` decides.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")
_ESCAPED = re.compile(rb"\\([0-7]{3})")


def mount_points(mountinfo: bytes) -> set[Path]:
    """The mount points a mountinfo table lists: each line's fifth field, with the kernel's octal escapes undone."""
    points = set()
    for line in mountinfo.splitlines():
        fields = line.split(b" ")
        if len(fields) > 4:
            point = _ESCAPED.sub(lambda m: bytes([int(m.group(1), 8)]), fields[4])
            points.add(Path(os.fsdecode(point)))
    return points


def _table() -> set[Path] | None:
    try:
        return mount_points(MOUNTINFO.read_bytes())
    except OSError:
        return None


def is_mount_point(path: Path) -> bool:
    """Whether something is mounted on ``path`` (a bind mount of a folder of the same file system counts)."""
    points = _table()
    return os.path.ismount(path) if points is None else path.resolve() in points


def same_mount(a: Path, b: Path) -> bool:
    """Whether a file can be renamed from ``a`` to ``b``: one file system, and one mount of it (rename(2)
    fails with EXDEV between two mounts of the same file system)."""
    if a.stat().st_dev != b.stat().st_dev:
        return False
    points = _table()
    if points is None:
        return True

    def mount_of(path: Path) -> Path:
        real = path.resolve()
        return max((p for p in points if real.is_relative_to(p)), key=lambda p: len(p.parts))

    return mount_of(a) == mount_of(b)
