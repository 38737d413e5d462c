"""The terms of LowKey's objective, each ``term(look) -> (b,)`` on one step's look at the faces.

LowKey (Cherepanova et al., ICLR 2021) maximises the members' feature distance
between the original and the perturbed face, plain and smoothed, minus ``c``
times the LPIPS between them (Zhang et al., CVPR 2018). The budget bounds the
change; the LPIPS term still shapes it inside the bound, towards what LPIPS
finds least different.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass

import torch

from lowkeyd.engine.perceptual import phase_averaged_lpips
from lowkeyd.engine.presets import Preset


@dataclass
class Look:
    """What one step saw of faces ``b``: their crops, and each member's embeddings of the views."""

    clean: torch.Tensor  # (b, 3, H, W)
    perturbed: torch.Tensor  # (b, 3, H, W)
    regions: torch.Tensor  # (b, 4) x1, y1, x2, y2: where each face's LPIPS is taken
    embeddings: dict[str, torch.Tensor]  # member -> (F, V*b, D) unit embeddings of the views (F: flips)
    reference: dict[str, torch.Tensor]  # member -> (F, b, D) of the clean faces
    pulling: dict[str, torch.Tensor]  # member -> (b,) bool: still short of its target for each face
    generator: torch.Generator | None


class FeatureDistance:
    """The ensemble's feature term: squared distance of unit embeddings to the original's, per member
    scaled to [0, 1] (or, as the paper, averaged over dimensions), flips averaged, views summed;
    a member already past its target for a face stops pulling it (the step goes to those behind)."""

    def __init__(self, preset: Preset, members: int) -> None:
        self.per_dim = preset.feature_scale == "per_dim"
        self.focus = preset.focus_members
        self.members = members

    def __call__(self, look: Look) -> torch.Tensor:
        terms = []
        for name, emb in look.embeddings.items():
            ref = look.reference[name]
            batch = ref.shape[1]
            d2 = (emb - ref.repeat(1, emb.shape[1] // batch, 1)).pow(2).sum(-1)
            d2 = d2 / (emb.shape[-1] if self.per_dim else 4.0)
            distance = d2.mean(0).view(-1, batch).sum(0)
            terms.append(distance * look.pulling[name] if self.focus else distance)
        return functools.reduce(operator.add, terms) / self.members


class LpipsPenalty:
    """``c`` times each face region's LPIPS, at a random phase of AlexNet's stride-4 grid.

    A fixed crop's LPIPS can be lowered by hiding the change in that grid,
    which no viewer's eye shares; a random phase per step takes that away.
    """

    def __init__(self, lpips: torch.nn.Module, weight: float) -> None:
        self.lpips = lpips
        self.weight = weight

    def __call__(self, look: Look) -> torch.Tensor:
        return self.weight * region_lpips(self.lpips, look.perturbed, look.clean, look.regions, look.generator)


def region_lpips(
    lpips: torch.nn.Module, a: torch.Tensor, b: torch.Tensor, regions: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """``(B,)`` LPIPS of each face region alone (regions differ in size: one face at a time), ``a``, ``b`` in [0, 1].

    With a generator, one crop at a random phase of the stride-4 grid; without,
    the phase average :mod:`lowkeyd.engine.evaluate` reports, estimated from
    every other phase (4 crops instead of 16).
    """
    values = []
    for i, (x1, y1, x2, y2) in enumerate(regions.tolist()):
        fa, fb = a[i : i + 1, :, y1:y2, x1:x2] * 2 - 1, b[i : i + 1, :, y1:y2, x1:x2] * 2 - 1
        if generator is None:
            values.append(phase_averaged_lpips(lpips, fa, fb, stride=2)[0])
            continue
        dy, dx = torch.randint(0, 4, (2,), generator=generator, device=a.device).tolist()
        h, w = fa.shape[-2] - 3, fa.shape[-1] - 3
        values.append(lpips(fa[..., dy : dy + h, dx : dx + w], fb[..., dy : dy + h, dx : dx + w]).mean())
    return torch.stack(values)
