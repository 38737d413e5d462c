"""Encoding a lossy photo at the source's size: a short search over the encoder's quality.

A fixed quality makes a phone's HEIC 2.7-3.9 times larger (or a fine source coarser). The
source's bits per pixel at its resolution say how hard it was compressed; encoding the
cloaked picture to about the same number of bytes gives it about the source's quality.
Sizes grow with quality, so a bisection finds it; the number of encodes is capped, because
a 12-megapixel HEIC takes seconds per try.
"""

from __future__ import annotations

import math
from collections.abc import Callable

TOLERANCE = 0.05  # stop once within 5 % of the target: the promise is 10 %
MAX_TRIES = 7  # enough to bisect 1..100 to one quality step


def match_size(encode: Callable[[int], bytes], target: int, *, low: int = 1, high: int = 100) -> tuple[bytes, int]:
    """(encoded bytes, quality) whose size is closest to ``target`` bytes among the qualities tried."""
    best: tuple[float, bytes, int] | None = None
    for _ in range(MAX_TRIES):
        if low > high:
            break
        quality = (low + high + 1) // 2
        data = encode(quality)
        miss = math.log(len(data) / target)
        if best is None or abs(miss) < best[0]:
            best = (abs(miss), data, quality)
        if abs(miss) <= math.log1p(TOLERANCE):
            break
        if miss > 0:
            high = quality - 1
        else:
            low = quality + 1
    assert best is not None  # MAX_TRIES > 0 and low <= high on the first pass
    return best[1], best[2]
