"""What the recognisers are shown at each step: LowKey's plain and smoothed views, under input diversity.

LowKey (Cherepanova et al., ICLR 2021) compares the original with both x' and
G(x'), a Gaussian-smoothed x', so the cloak survives the smoothing a resized
upload applies. For transfer to recognisers outside the ensemble, each step
takes its views in expectation over random transformations (DI-FGSM, Xie et
al., CVPR 2019; EOT, Athalye et al., ICML 2018): a down-and-up rescale and a
small misalignment of the face (shift, rotation, scale), the ones a scraper's
own resize and re-detection apply.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lowkeyd.engine.presets import Preset


def gaussian_blur(x: torch.Tensor, kernel: int, sigma: float) -> torch.Tensor:
    """Depthwise Gaussian blur with reflected borders (G in LowKey's objective)."""
    r = torch.arange(-(kernel // 2), kernel // 2 + 1, dtype=x.dtype, device=x.device)
    k1 = torch.exp(-(r**2) / (2 * sigma**2))
    k1 = k1 / k1.sum()
    k2 = (k1[:, None] * k1[None, :]).expand(x.shape[1], 1, kernel, kernel)
    pad = kernel // 2
    return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="reflect"), k2, groups=x.shape[1])


class ViewSampler:
    """``sampler(x', generator) -> (views, scale, plain_seen)``; ``sampler.jitter(n, generator, device)``.

    Without a generator (the reference and final embeddings) the views are the
    plain and smoothed ones, untransformed.
    """

    def __init__(self, preset: Preset) -> None:
        self.preset = preset

    def __call__(self, xp: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, float, bool]:
        """The images whose embeddings are compared (x' and G(x'), or one of them at random), the factor
        that makes their summed distances an unbiased estimate of the objective's, and whether the
        plain view (what is published) is among them."""
        p = self.preset
        use_plain = use_blur = True
        if p.blur_kernel and p.sample_views and generator is not None:
            use_plain = bool(torch.rand((), generator=generator, device=xp.device) < 0.5)
            use_blur = not use_plain
        views = [xp] if use_plain else []
        if p.blur_kernel and use_blur:
            views.append(gaussian_blur(xp, p.blur_kernel, p.blur_sigma))
        scale = (1 + bool(p.blur_kernel)) / len(views)
        out = torch.cat(views)
        if p.rescale_min < 1 and generator is not None:
            r = p.rescale_min + (1 - p.rescale_min) * torch.rand((), generator=generator, device=xp.device).item()
            size = [max(8, round(s * r)) for s in out.shape[-2:]]
            out = F.interpolate(out, size=size, mode="bilinear", antialias=True, align_corners=False)
            out = F.interpolate(out, size=xp.shape[-2:], mode="bilinear", align_corners=False)
        return out, scale, use_plain

    def jitter(self, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor | None:
        """``(n, 2, 3)`` random small affine maps (shift, rotation, scale) in aligned-face coordinates."""
        p = self.preset
        if generator is None or not (p.jitter_px or p.jitter_deg or p.jitter_scale):
            return None
        noise = torch.randn(n, 4, generator=generator, device=device)
        angle = noise[:, 0] * math.radians(p.jitter_deg)
        scale = 1 + noise[:, 1] * p.jitter_scale
        # Shifts in px of a ~112 px model input, as 2 px / size in normalised units.
        shift = noise[:, 2:] * (2 * p.jitter_px / 112)
        cos, sin = scale * angle.cos(), scale * angle.sin()
        return torch.stack([torch.stack([cos, -sin, shift[:, 0]], -1), torch.stack([sin, cos, shift[:, 1]], -1)], 1)
