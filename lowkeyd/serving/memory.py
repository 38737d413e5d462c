"""How large a photo the daemon takes: a pixel limit that leaves the machine usable.

A photo's peak memory grows with its pixels (decoded pixels, the face
detector's image pyramid, the encoder's image): 48 bytes a pixel measured by
``scripts/pixel_memory.py`` from 5 to 40 MP, 53 seen in the daemon at 110 MP.
Unchecked, one huge panorama takes gigabytes from the desktop, or gets the
daemon killed by the OOM killer with the models in it. Unless the config sets
a limit, a photo may peak at an eighth of the machine's memory, and at half of
what is available once the models are loaded, whichever is less: 57 MP with
24 GiB, 38 MP with 16 GiB. A larger photo fails at once with a clear message,
from its header, before a pixel is decoded.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

from lowkeyd.photo import DEFAULT_MAX_PIXELS

# Peak bytes per pixel of one photo read, checked for faces and written (see above), with room to spare.
BYTES_PER_PIXEL = 56
# The shares of memory one photo may take: of all of it, and of what is available when the limit is set.
SHARE_OF_TOTAL = 1 / 8
SHARE_OF_AVAILABLE = 1 / 2


def available_memory() -> int | None:
    """Bytes the kernel says can be allocated without swapping (Linux), else free pages; None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def total_memory() -> int | None:
    """The machine's physical memory in bytes; None if unknown."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def pixel_limit(megapixels: float | None) -> int:
    """The configured limit, or what the machine's memory allows (never above the photo layer's own)."""
    if megapixels is not None:
        return int(megapixels * 1e6)
    shares = [
        int(memory * share)
        for memory, share in ((total_memory(), SHARE_OF_TOTAL), (available_memory(), SHARE_OF_AVAILABLE))
        if memory is not None
    ]
    if not shares:
        return DEFAULT_MAX_PIXELS
    return max(1_000_000, min(DEFAULT_MAX_PIXELS, min(shares) // BYTES_PER_PIXEL))


def release_free_memory() -> None:
    """Hand memory freed by a large photo back to the system (glibc keeps it otherwise: 0.7 GB after 100 MP)."""
    if not sys.platform.startswith("linux"):
        return
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim): nothing to do
        pass
