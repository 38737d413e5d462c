"""Pixel measures of a cloak's visibility, as the issue's judge takes them (numpy only).

The holdout bench reports each of them per face and per photo, worst first:
LPIPS alone missed single pixels moved by 126 levels and black-and-white
photos that came back tinted.
"""

from __future__ import annotations

import numpy as np

# A photo is black-and-white when its channels differ by at most this many levels everywhere
# (what JPEG's chroma rounding leaves of R = G = B).
GREY_TOLERANCE = 2


def chroma_spread(rgb: np.ndarray) -> np.ndarray:
    """``(H, W)`` per pixel: max(|R-G|, |G-B|, |R-B|), the colour a pixel carries in levels."""
    wide = rgb.astype(np.int16)
    return wide.max(axis=2) - wide.min(axis=2)


def is_grey(rgb: np.ndarray, tolerance: int = GREY_TOLERANCE) -> bool:
    """Black-and-white, decided from the pixels rather than the file's mode."""
    return bool(chroma_spread(rgb).max(initial=0) <= tolerance)


def added_colour(cloaked: np.ndarray) -> int:
    """The largest colour any pixel of ``cloaked`` carries, in levels (meant for grey originals)."""
    return int(chroma_spread(cloaked).max(initial=0))


def changed_percentile(original: np.ndarray, cloaked: np.ndarray, q: float = 99.9) -> float:
    """The ``q``-th percentile, over the pixels that changed, of each pixel's largest channel change (levels).

    0 when nothing changed. Pixels the cloak never touches are left out, so the
    figure does not shrink with the size of the photo around the face.
    """
    change = np.abs(original.astype(np.int16) - cloaked.astype(np.int16)).max(axis=2)
    changed = change[change > 0]
    return float(np.percentile(changed, q)) if changed.size else 0.0


def grown_box(
    box: tuple[float, float, float, float], shape: tuple[int, ...], grow: float
) -> tuple[int, int, int, int]:
    """``box`` (x1, y1, x2, y2) grown by ``grow`` of its width and height on each side, in whole pixels inside ``shape``."""
    x1, y1, x2, y2 = box
    dx, dy = grow * (x2 - x1), grow * (y2 - y1)
    h, w = shape[:2]
    return max(0, int(x1 - dx)), max(0, int(y1 - dy)), min(w, int(np.ceil(x2 + dx))), min(h, int(np.ceil(y2 + dy)))
