"""How large a photo the daemon takes: a pixel limit that fits the memory it has.

A photo's peak memory grows with its pixels (decoded pixels, the cloaked copy,
the encoder's image), so on a small machine a huge panorama would be killed
by the OOM killer with the models in it, and retried after each restart. The
limit is taken from the memory available once the models are loaded, unless
the config sets one; a photo over it fails with a clear message instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

from lowkeyd.photo import DEFAULT_MAX_PIXELS

# Peak memory per pixel of one photo read, checked for faces and written: 41 bytes measured on a
# 100 MP PNG (about 10 read, the rest the face detector's image pyramid), plus room to spare.
BYTES_PER_PIXEL = 48
# Not all of what is available: the desktop and everything else need their share.
SHARE_OF_AVAILABLE = 0.5


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


def pixel_limit(megapixels: float | None) -> int:
    """The configured limit, or what the available memory allows (never above the photo layer's own)."""
    if megapixels is not None:
        return int(megapixels * 1e6)
    available = available_memory()
    if available is None:
        return DEFAULT_MAX_PIXELS
    return max(1_000_000, min(DEFAULT_MAX_PIXELS, int(available * SHARE_OF_AVAILABLE / BYTES_PER_PIXEL)))


def release_free_memory() -> None:
    """Hand memory freed by a large photo back to the system (glibc keeps it otherwise: 0.7 GB after 100 MP)."""
    if not sys.platform.startswith("linux"):
        return
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim): nothing to do
        pass
