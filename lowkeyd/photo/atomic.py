"""Atomic file replacement: a reader (or a sync client) sees the old file or the complete new one, never a part."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from lowkeyd.errors import WriteError

TEMP_SUFFIX = ".lowkeyd-tmp"


def atomic_write(dest: Path, data: bytes, *, like: os.stat_result | None = None) -> None:
    """Write ``data`` to ``dest`` through a temporary file in the same folder, fsync'd, then renamed.

    With ``like`` (the source's stat) the file gets the source's access/modification
    times and permission bits, plus read and write for its owner: a private photo's copy
    stays private, but a read-only (or mode 000) original does not make a copy that the
    uploader cannot read or the next cloak cannot replace. On any failure the temporary file is removed and ``dest``
    is left as it was.
    """
    # A dot-name, so watchers and is_photo_path() skip it; same folder, so the rename is atomic.
    temp = dest.parent / f".{dest.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
    try:
        # O_EXCL: never follow or reuse something already there; 0o666 lets the umask decide.
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as exc:
        raise WriteError(f"{dest}: cannot write ({exc.strerror or exc})", exc.errno) from exc
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if like is not None:
            os.chmod(temp, stat.S_IMODE(like.st_mode) | stat.S_IRUSR | stat.S_IWUSR)
            os.utime(temp, ns=(like.st_atime_ns, like.st_mtime_ns))
        os.replace(temp, dest)
    except BaseException as exc:
        temp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise WriteError(f"{dest}: cannot write ({exc.strerror or exc})", exc.errno) from exc
        raise
    fsync_directory(dest.parent)


def fsync_directory(directory: Path) -> None:
    """Make the rename itself durable; platforms that cannot open a folder skip this."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
