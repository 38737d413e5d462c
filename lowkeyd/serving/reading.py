"""Reading a file without trusting it: a watched photo, a job root's, or what sits in the outbox.

Whoever can write into a watched folder (a sync peer, say) or the outbox decides what is
there: a FIFO, a link to /dev/zero, a file that grows while it is read. So a file is
refused unless it is a regular file, and it is read only through a descriptor
opened without following a final symlink and without blocking, checked with
fstat before a byte is read, and never read past the size it had then. Reads are bounded in
time too: they run in a small pool of reader threads and the caller waits at
most :data:`READ_SECONDS` (a hung network mount stalls a reader, not the daemon).
Where a path may lead is the caller's rule (a watched folder's, a job root's).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from lowkeyd.errors import LowkeydError
from lowkeyd.photo.complete import looks_complete
from lowkeyd.photo.decode import MAX_FILE_BYTES, header_pixels

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a folder",
}


# Where a photo's size is, in every format lowkeyd reads, short of a JPEG with megabytes of metadata first.
HEADER_BYTES = 4 << 20
# A read of a local file up to MAX_FILE_BYTES is done well within this; a network mount that does
# not answer for this long is hung, and the file is looked at again on its next event or scan.
READ_SECONDS = 20.0
_READERS = 2
T = TypeVar("T")


class Refused(LowkeydError):
    """A file that lowkeyd will not read, let alone publish."""


class _Readers:
    """The reader threads: a stalled read keeps its thread, so when all are stalled, reads fail at once."""

    def __init__(self, threads: int) -> None:
        self._threads = threads
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="lowkeyd-read")
        self._lock = threading.Lock()
        self._busy = 0

    def run(self, read: Callable[[], T], what: Path) -> T:
        with self._lock:
            if self._busy >= self._threads:
                raise OSError(errno.ETIMEDOUT, "the file system stopped answering (a hung mount?)", str(what))
            self._busy += 1
        future = self._pool.submit(read)
        future.add_done_callback(lambda _: self._done())
        try:
            return future.result(timeout=READ_SECONDS)
        except FutureTimeout:
            raise OSError(errno.ETIMEDOUT, f"no answer in {READ_SECONDS:g} s (a hung mount?)", str(what)) from None

    def _done(self) -> None:
        with self._lock:
            self._busy -= 1


_readers = _Readers(_READERS)


def must_be_regular(st: os.stat_result) -> None:
    """Refused unless ``st`` is a regular file no larger than a photo can be."""
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
        must_be_regular(st)
        yield fd, st
    finally:
        os.close(fd)


def _read_through(real: Path, keep: int) -> tuple[str, bytes]:
    """SHA-256 of the file, read no further than its size when opened, and its first ``keep`` bytes."""

    def read() -> tuple[str, bytes]:
        digest, head = hashlib.sha256(), bytearray()
        with _open(real) as (fd, st):
            left = st.st_size
            while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
                digest.update(chunk)
                head += chunk[: keep - len(head)]
                left -= len(chunk)
        return digest.hexdigest(), bytes(head)

    return _readers.run(read, real)


def content_hash(real: Path) -> str:
    """SHA-256 of the file at ``real`` (its links resolved), read no further than its size when opened."""
    return _read_through(real, 0)[0]


def hash_and_pixels(real: Path) -> tuple[str, int | None]:
    """:func:`content_hash`, and the pixels its header announces (None when its first bytes do not say)."""
    digest, head = _read_through(real, HEADER_BYTES)
    return digest, header_pixels(head)


def is_complete(real: Path) -> bool:
    """The file's container is complete (see :func:`~lowkeyd.photo.complete.looks_complete`).

    Read rather than mapped: a writer truncating a mapped file would kill the daemon with SIGBUS.
    """
    def read() -> bytes:
        with _open(real) as (fd, st), os.fdopen(os.dup(fd), "rb") as file:
            return file.read(st.st_size)

    try:
        data = _readers.run(read, real)
    except (OSError, LowkeydError):
        return False
    return looks_complete(data)
