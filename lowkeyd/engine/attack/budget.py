"""The visibility budget: how far each face may change, as a hard limit every step is projected into.

LowKey's LPIPS term is a penalty: it trades visibility for protection, and on a
face that resists it trades without bound (single pixels moved by 100+ levels,
grey photos tinted). Here visibility is a constraint instead, as in
perceptually bounded attacks (Laidlaw, Singla and Feizi, ICLR 2021: project onto
an LPIPS ball rather than penalise it; Croce and Hein, ICCV 2019: per-pixel
bounds from local variation, so the change hides in texture). Three bounds, all
on the face's own scale (levels of 255 and a per-face LPIPS do not depend on
how many pixels the face has):

* per pixel: a luma just-noticeable difference (JND) map, Chou and Li's
  luminance adaptation (IEEE TCSVT 1995: a change shows least on mid-grey, more
  in shadows) plus contrast masking by local standard deviation (a change hides
  in hair, brows and edges, not on flat skin), combined as in Yang et al.'s
  NAMM (2005), capped; chroma a fixed share of it, none on a grey face;
* the RMS of the change over the face, which keeps it from spreading into a
  visible veil, and over the whole photo, which bounds its PSNR: a face that
  fills a tight crop gets less than one in a wide shot, where the same change
  is a small part of the picture;
* the face's LPIPS, enforced on the published pixels by bisection on the
  change's scale (:func:`fit_scale`; the attack's LPIPS term keeps it near).

``budget`` scales all three: 1 is the default preset's, 2 twice as much.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# One unit of budget, each measured on the varied test set (README, Visibility).
# JND: the luminance term is Chou and Li's, in levels; texture adds this share of
# the local standard deviation; the sum is capped where a change reads as a blot whatever hides it.
TEXTURE_MASKING = 0.5
# The per-pixel luma limit of one unit of budget: this many JNDs, and never more than PIXEL_CAP
# levels. The RMS bound below, not this, keeps the change small overall; this one shapes it
# (less on flat skin, more in texture) and keeps any pixel from carrying much of it.
LIMIT_PER_JND = 3.0
PIXEL_CAP = 16.0
# RMS of the change over the face, in levels.
RMS_PER_BUDGET = 8.0
# RMS of the change over the whole photo, in levels: its PSNR is at least 20 log10(255 / 3.8) = 36.5 dB.
PHOTO_RMS_PER_BUDGET = 3.8
# Face LPIPS (alex, phase-averaged, box + 10 %), per unit of budget.
LPIPS_PER_BUDGET = 0.025
# A face whose chroma varies by at most this many levels (99.5th percentile of the
# channel spread) is grey, however it is stored; it gets no chroma change at all.
GREY_SPREAD = 2.0
_LUMA = (0.299, 0.587, 0.114)


def luma(x: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)`` BT.601 luma of RGB ``x``."""
    return _LUMA[0] * x[:, 0:1] + _LUMA[1] * x[:, 1:2] + _LUMA[2] * x[:, 2:3]


def jnd_map(x: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)``: the smallest luma change (in levels of 255) that shows at each pixel of ``x`` in ``[0, 1]``."""
    y = luma(x) * 255
    background = F.avg_pool2d(y, 5, 1, 2, count_include_pad=False)
    dark = 17 * (1 - (background / 127).clamp(0, 1).sqrt()) + 3
    bright = 3 / 128 * (background - 127) + 3
    luminance = torch.where(background <= 127, dark, bright)
    mean = F.avg_pool2d(y, 5, 1, 2, count_include_pad=False)
    deviation = (F.avg_pool2d(y * y, 5, 1, 2, count_include_pad=False) - mean**2).clamp_min(0).sqrt()
    texture = TEXTURE_MASKING * deviation
    # NAMM: the two maskings overlap; adding them in full overstates the threshold.
    combined = luminance + texture - 0.3 * torch.minimum(luminance, texture)
    # Smoothed so the limit has no hard edges of its own (they would draw the texture's outline).
    return F.avg_pool2d(combined, 3, 1, 1, count_include_pad=False)


def grey_faces(x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``(B,)`` bool: faces whose pixels inside ``masks`` carry no colour (black-and-white, whatever the file's mode)."""
    spread = (x.amax(1) - x.amin(1)) * 255  # (B, H, W)
    grey = []
    for s, m in zip(spread, masks[:, 0] > 0, strict=True):
        values = s[m]
        grey.append(values.numel() == 0 or float(torch.quantile(values, 0.995)) <= GREY_SPREAD)
    return torch.tensor(grey, device=x.device)


# BT.601 full-range YCbCr -> RGB (JPEG's): the change is built from luma and chroma parts.
YCBCR_TO_RGB = torch.tensor([[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]])


@dataclass
class FaceBudget:
    """The budget of one batch of faces, fixed when the attack starts.

    The attack's variable ``p`` ``(B, 3, H, W)`` is the change in luma and two
    chroma planes (pixel values in ``[0, 1]`` units); the per-pixel bound is the
    box ``|p| <= limit``, and :meth:`change` turns ``p`` into RGB.
    """

    limit: torch.Tensor  # (B, 3, H, W): per-pixel bound of Y, Cb, Cr in [0, 1] units, 0 where the face may not change
    area: torch.Tensor  # (B,): pixels the change may cover (the mask's sum)
    rms: torch.Tensor  # (B,): RMS bound over the face, in [0, 1] units

    @classmethod
    def for_faces(
        cls,
        x: torch.Tensor,
        masks: torch.Tensor,
        guard: torch.Tensor,
        budget: float,
        chroma: float,
        shares: torch.Tensor | None = None,
    ) -> FaceBudget:
        """``x`` ``(B, 3, H, W)`` crops; ``masks`` ``(B, 1, H, W)`` where the change may go (soft);
        ``guard`` ``(B, 1, H, W)`` the share of the limit allowed over features where a change shows
        (the eyes' openings, the lips); ``chroma`` the chroma limit as a share of luma's; ``shares``
        ``(B,)`` the share of its photo that the masks of all faces in it cover (None: each face is
        its whole photo, the strictest case)."""
        luma_limit = budget * (LIMIT_PER_JND * jnd_map(x)).clamp(max=PIXEL_CAP) / 255 * masks * guard
        colour = torch.where(grey_faces(x, masks), 0.0, chroma).view(-1, 1, 1, 1)
        # No colour over the guarded features either: a tinted iris or lip is the first thing anyone sees.
        chroma_limit = luma_limit * colour * guard
        limit = torch.cat([luma_limit, chroma_limit, chroma_limit], 1)
        area = masks.sum((1, 2, 3)).clamp_min(1)
        if shares is None:
            shares = torch.ones(x.shape[0], device=x.device)
        # The photo's RMS, spread evenly over its faces' pixels, with every other pixel unchanged.
        photo = PHOTO_RMS_PER_BUDGET / shares.clamp(1e-6, 1).sqrt()
        rms = budget * photo.clamp(max=RMS_PER_BUDGET) / 255
        return cls(limit, area, rms)

    @staticmethod
    def change(p: torch.Tensor) -> torch.Tensor:
        """RGB change ``(b, 3, H, W)`` for the variable ``p``."""
        return torch.einsum("ij,bjhw->bihw", YCBCR_TO_RGB.to(p), p)

    @torch.no_grad()
    def project(self, p: torch.Tensor, idx: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        """``p`` of faces ``idx`` moved back into the budget's box and then its RMS ball (in place, and
        returned; scaling down keeps the box)."""
        limit = self.limit[idx]
        torch.maximum(torch.minimum(p, limit), -limit, out=p)
        rms = self.change(p).pow(2).sum((1, 2, 3)).div(3 * self.area[idx]).sqrt()
        p.mul_((self.rms[idx] / rms.clamp_min(1e-12)).clamp(max=1).view(-1, 1, 1, 1))
        return p

    def precondition(self, grad: torch.Tensor, idx: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        """``grad`` scaled by each pixel's share of the face's limit: the step goes where the change hides."""
        limit = self.limit[idx]
        scale = limit.pow(2).sum((1, 2, 3), keepdim=True).div(3 * self.area[idx].view(-1, 1, 1, 1)).sqrt()
        return grad * limit / scale.clamp_min(1e-12)


@torch.no_grad()
def fit_scale(measure: Callable[[torch.Tensor], torch.Tensor], cap: float, ones: torch.Tensor, iterations: int = 7) -> torch.Tensor:
    """``(B,)`` the largest scale per face (at most 1) at which ``measure(scale)`` ``(B,)`` stays within ``cap``.

    A perceptual distance grows with the change's size along a fixed direction,
    so bisection on the scale finds the largest that fits (to 2^-iterations).
    """
    over = measure(ones) > cap
    if not over.any():
        return ones
    low, high = torch.zeros_like(ones), ones.clone()
    for _ in range(iterations):
        mid = (low + high) / 2
        fits = measure(torch.where(over, mid, ones)) <= cap
        low = torch.where(over & fits, mid, low)
        high = torch.where(over & ~fits, mid, high)
    return torch.where(over, low, ones)
