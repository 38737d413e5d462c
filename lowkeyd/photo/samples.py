"""The source's own samples when they are not 8-bit RGB or grayscale: 10-16 bit channels, CMYK, or a TIFF's.

The engine cloaks 8-bit RGB. A deeper or CMYK source keeps its samples here, and the output
is those samples with the cloak's change carried onto them: a pixel the cloak left alone
keeps its original samples bit for bit, so the output loses no depth and no ink outside the
faces, and a changed pixel decodes to the cloaked 8-bit value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True, eq=False)
class Samples:
    """Upright source samples: (H, W, C) with C channels L, LA, RGB, RGBA at ``bits``, or CMYK at 8 bits."""

    array: np.ndarray  # uint16 for 9-16 bits, uint8 for CMYK and 8-bit TIFF; treat as read-only
    bits: int
    cmyk: bool = False

    @property
    def maximum(self) -> int:
        return (1 << self.bits) - 1

    @property
    def colours(self) -> int:
        """How many leading channels carry colour (the rest is alpha)."""
        return 4 if self.cmyk else (3 if self.array.shape[2] >= 3 else 1)

    def to_8bit(self) -> np.ndarray:
        """The samples scaled to 8 bits, rounding to nearest (what the engine and viewers see)."""
        scaled = (self.array.astype(np.uint32) * 255 + self.maximum // 2) // self.maximum
        return scaled.astype(np.uint8)

    def cloaked(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """The output samples, upright: these samples with the change from ``before`` to ``after`` (8-bit RGB)."""
        if self.cmyk:
            return _cmyk_with(self.array, before, after)
        if self.colours == 1:
            before, after = _luma(before), _luma(after)
        delta = after.astype(np.int32) - before.astype(np.int32)
        out = self.array.astype(np.int32)
        # Scaling the 8-bit change to full depth: a changed pixel then reads back as the cloaked value.
        out[..., : self.colours] += (delta * self.maximum * 2 + 255) // 510
        return np.clip(out, 0, self.maximum).astype(self.array.dtype)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 1) grayscale as Pillow computes it, which is how the 8-bit view was made."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).convert("L"))[..., None]


def _cmyk_with(cmyk: np.ndarray, before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """CMYK whose changed pixels convert (as Pillow converts CMYK) to ``after`` as near as their black allows.

    Pillow's conversion is R = (255 - C)(255 - K) / 255. The black ink stays as it was: a CMYK
    JPEG is rewritten block by block, and libjpeg cannot write a changed black channel. A
    cloaked colour brighter than its black admits (R > 255 - K) is written at that limit.
    """
    out = cmyk.copy()
    changed = (before != after).any(axis=2)
    if not changed.any():
        return out
    rgb = after[changed].astype(np.float64)
    white = 255 - cmyk[changed][:, 3].astype(np.float64)
    inks = 255 - np.divide(rgb * 255, white[:, None], out=np.zeros_like(rgb), where=white[:, None] > 0)
    out[changed, :3] = np.clip(np.rint(inks), 0, 255).astype(np.uint8)
    return out
