"""Looking at a file in a watched folder without trusting it.

Whoever can write into a watched folder (a sync peer, say) decides what is
there: a symbolic link to a private photo elsewhere on the disk, a FIFO, a
link to /dev/zero. So a candidate is resolved and refused when that leads out
of its watched folder (the rule ``POST /v1/jobs`` applies to its roots), it is
refused unless it is a regular file, and it is read only through a descriptor
opened without following a final symlink and without blocking, checked with
fstat before a byte is read, and never read past the size it had then. A stat
never opens the file, so it cannot block on a FIFO either.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lowkeyd.daemon.config import is_within
from lowkeyd.daemon.state import FileKey
from lowkeyd.errors import LowkeydError
from lowkeyd.photo.complete import looks_complete
from lowkeyd.photo.decode import MAX_FILE_BYTES

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a folder",
}


class Refused(LowkeydError):
    """A file in a watched folder that lowkeyd will not read, let alone publish."""


def inspect(path: Path, root: Path) -> tuple[Path, FileKey]:
    """``path`` with its symbolic links resolved, and its key; Refused unless it is a regular file in ``root``.

    FileNotFoundError when it (or a link's target) does not exist.
    """
    real = path.resolve()
    if not is_within(real, root):
        raise Refused(f"a symbolic link to {real}, outside the watched folder: not read, not published")
    st = os.stat(real, follow_symlinks=False)
    _must_be_regular(st)
    return real, FileKey(st.st_size, st.st_mtime_ns, st.st_ino)


def _must_be_regular(st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise Refused(f"{kind}, not a photo file: not read, not published")
    if st.st_size > MAX_FILE_BYTES:
        raise Refused(f"{st.st_size >> 20} MiB is too large for a photo: not read, not published")


@contextmanager
def _open(real: Path) -> Iterator[tuple[int, os.stat_result]]:
    fd = os.open(real, _OPEN_FLAGS)
    try:
        st = os.fstat(fd)
        _must_be_regular(st)
        yield fd, st
    finally:
        os.close(fd)


def content_hash(real: Path) -> str:
    """SHA-256 of the file :func:`inspect` resolved, read no further than its size when opened."""
    digest = hashlib.sha256()
    with _open(real) as (fd, st):
        left = st.st_size
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def is_complete(real: Path) -> bool:
    """The file's container is complete (see :func:`~lowkeyd.photo.complete.looks_complete`).

    Read rather than mapped: a writer truncating a mapped file would kill the daemon with SIGBUS.
    """
    try:
        with _open(real) as (fd, st), os.fdopen(os.dup(fd), "rb") as file:
            data = file.read(st.st_size)
    except (OSError, LowkeydError):
        return False
    return looks_complete(data)
