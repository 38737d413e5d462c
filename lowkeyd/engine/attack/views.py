"""What the recognisers are shown at each step: LowKey's plain and smoothed views.

LowKey (Cherepanova et al., ICLR 2021) compares the original with both x' and
G(x'), a Gaussian-smoothed x', so the cloak survives the smoothing a resized
upload applies; a step may look at one of the two at random (half the cost).
Input diversity (DI-FGSM's random rescale, EOT over small misalignments) was
measured inside the budget and removed: see docs/transfer-history.md.
"""

from __future__ import annotations

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
    """``sampler(x', generator) -> (views, scale, plain_seen)``.

    Without a generator (the reference and final embeddings) the views are both
    the plain and the smoothed one.
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
        return torch.cat(views), scale, use_plain
