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


def stripe_score(original: np.ndarray, cloaked: np.ndarray, box: tuple[float, float, float, float], tile: int = 32) -> float:
    """How strongly the change inside ``box`` repeats on a fixed lattice: its sharpest spectral peak.

    Resampling grids (an alignment warp that shrinks, an
    upsampled crop) leave their period in the gradient, and so in the change,
    as stripes and a fine grid. Such a change has narrow peaks in its spectrum;
    an adversarial change otherwise has a broad one. The luma change is cut
    into half-overlapping ``tile`` px tiles (Hann window) and their power
    spectra averaged (Welch), which steadies a broad spectrum while a lattice
    adds up; each frequency with a period of 2 to 8 px is compared with the
    median of its ring (same radius), and the largest ratio is returned. A
    broad change scores about 2-3; a lattice, tens.
    """
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    delta = cloaked.astype(np.float64) - original.astype(np.float64)
    luma = (delta @ np.array([0.299, 0.587, 0.114]))[max(0, y1) : y2, max(0, x1) : x2]
    window = np.outer(np.hanning(tile), np.hanning(tile))
    step = tile // 2
    spectra = [
        np.abs(np.fft.fft2((part - part.mean()) * window)) ** 2
        for y in range(0, luma.shape[0] - tile + 1, step)
        for x in range(0, luma.shape[1] - tile + 1, step)
        if np.any(part := luma[y : y + tile, x : x + tile])
    ]
    if not spectra:
        return 0.0
    power = np.fft.fftshift(np.mean(spectra, axis=0))
    f = np.arange(tile) - tile // 2
    radius = np.hypot(*np.meshgrid(f, f, indexing="ij"))
    ring = np.rint(radius).astype(int)
    score = 0.0
    for r in range(tile // 8, tile // 2 + 1):  # periods of 8 px down to 2 px
        on = ring == r
        median = np.median(power[on])
        if median > 0:
            score = max(score, float(power[on].max() / median))
    return score
