"""A differentiable JPEG round trip, close to libjpeg's (and so Pillow's) baseline codec.

Photo sites re-encode every upload, so a cloak should survive JPEG. Letting
the attack see the round trip needs a JPEG that passes gradients: the codec's
only non-differentiable step is rounding the quantised DCT coefficients,
which here rounds exactly in the forward pass and passes the gradient
straight through (BPDA, Athalye et al. 2018). Everything else follows
libjpeg's defaults: full-range BT.601 YCbCr, 4:2:0 chroma by 2x2 box
averaging, the IJG quality scaling of the Annex K tables, an orthonormal
8x8 DCT, and "fancy" (triangle-filter) chroma upsampling on decode, which is
a bilinear x2 upsampling with half-pixel centres. libjpeg computes in
integers, so pixels differ by a level or two where values round differently.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# ITU-T T.81 Annex K tables (quality 50), row-major.
_LUMA_TABLE = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip
_CHROMA_TABLE = (
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
)  # fmt: skip

# Full-range ITU-R BT.601 (JFIF), without the chroma offset of 128.
RGB_TO_YCBCR = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
YCBCR_TO_RGB = torch.tensor([[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]])


def quantisation_tables(quality: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(8, 8)`` luma and chroma tables libjpeg uses at ``quality`` (1-100, baseline: clamped to 1..255)."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be 1-100, got {quality}")
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    tables = []
    for base in (_LUMA_TABLE, _CHROMA_TABLE):
        t = torch.tensor(base, dtype=torch.float32)
        tables.append(((t * scale + 50) // 100).clamp(1, 255).view(8, 8))
    return tables[0], tables[1]


def _dct_matrix(device: torch.device) -> torch.Tensor:
    n = torch.arange(8, dtype=torch.float32, device=device)
    m = torch.cos((2 * n[None, :] + 1) * n[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    m[0] /= math.sqrt(2)
    return m  # orthonormal: m @ m.T = I


def _round_through(x: torch.Tensor) -> torch.Tensor:
    """Rounds in the forward pass; the backward pass sees the identity."""
    return x + (torch.round(x) - x).detach()


def _quantise(plane: torch.Tensor, table: torch.Tensor, dct: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)`` level-shifted samples (H, W multiples of 8) through DCT, quantisation and back."""
    b, h, w = plane.shape
    blocks = plane.view(b, h // 8, 8, w // 8, 8).transpose(2, 3)  # (B, by, bx, 8, 8)
    coefficients = dct @ blocks @ dct.T
    restored = _round_through(coefficients / table) * table
    return (dct.T @ restored @ dct).transpose(2, 3).reshape(b, h, w)


def jpeg_round_trip(rgb: torch.Tensor, quality: int, *, subsample: bool = True) -> torch.Tensor:
    """``(B, 3, H, W)`` in ``[0, 1]`` as it comes back from a JPEG at ``quality`` (4:2:0 unless
    ``subsample`` is False), differentiable; decoded samples are rounded to 8 bits as a decoder does."""
    b, _, h, w = rgb.shape
    mcu = 16 if subsample else 8
    # libjpeg pads partial blocks by repeating the edge pixels.
    ph, pw = -h % mcu, -w % mcu
    x = F.pad(rgb * 255, (0, pw, 0, ph), mode="replicate") if ph or pw else rgb * 255
    # The codec works on 8-bit samples at each stage: colour conversion, subsampling, decoding.
    ycc = _round_through(torch.einsum("ij,bjhw->bihw", RGB_TO_YCBCR.to(x), x))
    luma_table, chroma_table = (t.to(x) for t in quantisation_tables(quality))
    dct = _dct_matrix(x.device)
    luma = _quantise(ycc[:, 0] - 128, luma_table, dct)
    chroma = ycc[:, 1:]
    if subsample:
        chroma = _round_through(F.avg_pool2d(chroma, 2))
    chroma = _quantise(chroma.flatten(0, 1), chroma_table, dct).view_as(chroma)
    chroma = _round_through(chroma.clamp(-128, 127))
    if subsample:
        chroma = _round_through(F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False))
    decoded = torch.cat([_round_through((luma[:, None] + 128).clamp(0, 255)), chroma], 1)
    out = torch.einsum("ij,bjhw->bihw", YCBCR_TO_RGB.to(x), decoded)
    return (_round_through(out.clamp(0, 255)) / 255)[..., :h, :w]
