"""From a gradient to a step: translation invariance and the step rule; the budget projects after.

* Translation invariance (TI-FGSM, Dong et al., CVPR 2019): the gradient is
  smoothed by a Gaussian, the step for every small shift of the face at once,
  which transfers to recognisers that align the face a little differently.
* The step rule: LowKey's signed gradient (every pixel moves by the full step,
  whatever its gradient) or the gradient scaled to a fixed RMS over the face,
  which spends the budget where the gradient is (ENGINE-NOTES: better per unit
  of LPIPS).

Momentum (MI-FGSM) was measured inside the budget and removed: see
docs/transfer-history.md.
"""

from __future__ import annotations

import torch

from lowkeyd.engine.attack.views import gaussian_blur
from lowkeyd.engine.presets import Preset


class StepRule:
    """``rule(grad, area) -> step``: the change of the attack's variable for one step.

    ``grad`` ``(b, C, H, W)``; ``area`` ``(b,)`` the pixels each face may change, over which the
    L2 rule's RMS is taken (how much of the crop a face fills must not change
    how far each of its pixels moves).
    """

    def __init__(self, preset: Preset) -> None:
        self.preset = preset

    @torch.no_grad()
    def __call__(self, grad: torch.Tensor, area: torch.Tensor) -> torch.Tensor:
        p = self.preset
        if p.ti_kernel:
            grad = gaussian_blur(grad, p.ti_kernel, p.ti_kernel / 4)
        if p.step_rule == "sign":
            direction = grad.sign()
        else:
            rms = (grad.pow(2).sum((1, 2, 3)) / (area * grad.shape[1])).sqrt().clamp_min(1e-12)
            direction = grad / rms.view(-1, 1, 1, 1)
        return p.step_size * direction
