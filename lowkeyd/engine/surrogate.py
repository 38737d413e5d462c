"""What the attack does inside its recognisers: feature-map dropout.

A perturbation that fools one fixed set of networks overfits to their exact
features; one that fools many randomly thinned versions of them (DFANet, Zhong
and Deng 2020: dropout on the feature maps of the surrogate face models) must
move features every variant relies on, which unseen recognisers share more
often. (An intermediate-feature term, ILA/FIA-style, was measured and removed:
README, Transfer.)

Hooks are attached for the length of one attack (:meth:`Surrogates.attached`)
and act only while switched on, so the resident models stay plain for the
reference and final embeddings, and for every other caller.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from lowkeyd.engine.models.base import FaceEmbedder


def _convolutions(model: nn.Module) -> list[nn.Conv2d]:
    # Registration order follows the forward pass in every recogniser lowkeyd runs.
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


class Surrogates:
    """Feature-map dropout with probability ``dropout`` on every convolution's output but the first."""

    def __init__(self, models: Sequence[FaceEmbedder], dropout: float) -> None:
        self.models = list(models)
        self.dropout = dropout
        self.generator: torch.Generator | None = None
        self.drop = False  # dropout on (attack steps only)

    @contextlib.contextmanager
    def attached(self, generator: torch.Generator) -> Iterator[Surrogates]:
        handles = []
        self.generator = generator
        try:
            if self.dropout > 0:
                for model in self.models:
                    # Not the first convolution: dropping input-level edges acts like pixel noise, not model variety.
                    handles += [c.register_forward_hook(self._drop_hook) for c in _convolutions(model)[1:]]
            yield self
        finally:
            for h in handles:
                h.remove()
            self.generator, self.drop = None, False

    def _drop_hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor | None:
        if not self.drop:
            return None
        keep = torch.rand(output.shape, generator=self.generator, device=output.device) >= self.dropout
        return output * keep.to(output.dtype) / (1 - self.dropout)
