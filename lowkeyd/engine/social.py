"""What a photo site does to an upload before a scraper sees it: downscale, re-encode."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# Typical of large social sites: long side 1080 px, JPEG quality around 80.
LONG_SIDE = 1080
QUALITY = 80


def social_pipeline(rgb: np.ndarray, long_side: int = LONG_SIDE, quality: int = QUALITY) -> np.ndarray:
    """``rgb`` resized (never enlarged) to ``long_side`` and round-tripped through JPEG at ``quality``."""
    image = Image.fromarray(rgb)
    scale = long_side / max(image.size)
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))
