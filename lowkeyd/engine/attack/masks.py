"""Where on a face the change may go: away from the eyes' openings and the lips.

A texture-seeking change (the budget's JND map is highest on edges) is drawn
to the eyes and the mouth, and those are exactly where a person reading a face
looks first: a tinted iris, a darker lid line or a changed lip outline is seen
at once (eye-tracking studies of face recognition: Henderson, Williams and
Falk 2005; measured here as the purple-iris and moustache-shadow defects of
earlier releases). The guard lowers the budget there, softly, from the
detector's five landmarks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def feature_guard(landmarks: torch.Tensor, size: tuple[int, int], weight: float) -> torch.Tensor:
    """``(B, 1, H, W)``: ``weight`` over each eye's opening and over the lips, 1 elsewhere, soft-edged.

    ``landmarks`` ``(B, 5, 2)``: eyes, nose tip, mouth corners, in pixels of the ``size`` ``(H, W)`` crop.
    """
    left, right, mouth_l, mouth_r = landmarks[:, 0], landmarks[:, 1], landmarks[:, 3], landmarks[:, 4]
    d = (right - left).norm(dim=-1).clamp_min(1.0)
    mouth = (mouth_r - mouth_l).norm(dim=-1) / d  # mouth width in eye distances
    lips = ((mouth_l + mouth_r) / 2, 0.35 + 0.5 * mouth, 0.2)
    cover = _ellipse_cover(size, ((left, 0.22, 0.15), (right, 0.22, 0.15), lips), d)
    return (1 - (1 - weight) * cover)[:, None]


def _ellipse_cover(
    size: tuple[int, int], ellipses: Sequence[tuple[torch.Tensor, torch.Tensor | float, float]], d: torch.Tensor
) -> torch.Tensor:
    """``(B, H, W)``: 1 inside any of ``ellipses`` (centre ``(B, 2)``, half-axes in eye distances ``d`` ``(B,)``:
    a number or a ``(B,)`` tensor), 0 well outside, a smooth step between."""
    h, w = size
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=d.device),
        torch.arange(w, dtype=torch.float32, device=d.device),
        indexing="ij",
    )
    cover = torch.zeros(d.shape[0], h, w, device=d.device)
    for centre, ax, ay in ellipses:
        half_x = (torch.as_tensor(ax, device=d.device) * d).view(-1, 1, 1)
        half_y = (ay * d).view(-1, 1, 1)
        # Axis-aligned ellipses are enough: the roll of a face the attack keeps is small.
        r = ((xs - centre[:, 0, None, None]) / half_x) ** 2 + ((ys - centre[:, 1, None, None]) / half_y) ** 2
        t = ((1.3 - r.sqrt()) / 0.5).clamp(0, 1)
        cover = torch.maximum(cover, t * t * (3 - 2 * t))
    return cover
