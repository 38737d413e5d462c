"""What the attack does inside its recognisers: feature-map dropout and intermediate-feature taps.

Both exist for transfer. A perturbation that fools one fixed set of networks
overfits to their exact features; one that fools many randomly thinned
versions of them (DFANet, Zhong and Deng 2020: dropout on the feature maps of
the surrogate face models) must move features every variant relies on, which
unseen recognisers share more often. Intermediate features (ILA, Huang et al.
2019; FIA, Wang et al. 2021) are less model-specific than the final embedding,
so pushing them apart transfers better than pushing embeddings alone.

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
    """Feature-map dropout with probability ``dropout`` on every convolution's output, and a tap
    on the convolution ``tap_depth`` of the way through each model (0 = first, 1 = last) that
    records its output, globally pooled per channel (small misalignments between steps do not
    change a pooled feature)."""

    def __init__(self, models: Sequence[FaceEmbedder], dropout: float, tap_depth: float | None) -> None:
        self.models = list(models)
        self.dropout = dropout
        self.tap_depth = tap_depth
        self.generator: torch.Generator | None = None
        self.drop = False  # dropout on (attack steps only)
        self.taps: dict[str, torch.Tensor] = {}  # model name -> (N, C) pooled features of the last forward

    @contextlib.contextmanager
    def attached(self, generator: torch.Generator) -> Iterator[Surrogates]:
        handles = []
        self.generator = generator
        try:
            for model in self.models:
                convs = _convolutions(model)
                if self.dropout > 0:
                    # Not the first convolution: dropping input-level edges acts like pixel noise, not model variety.
                    handles += [c.register_forward_hook(self._drop_hook) for c in convs[1:]]
                if self.tap_depth is not None and convs:
                    tapped = convs[min(len(convs) - 1, round(self.tap_depth * (len(convs) - 1)))]
                    handles.append(tapped.register_forward_hook(self._tap_hook(model.name)))
            yield self
        finally:
            for h in handles:
                h.remove()
            self.generator, self.drop, self.taps = None, False, {}

    def _drop_hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor | None:
        if not self.drop:
            return None
        keep = torch.rand(output.shape, generator=self.generator, device=output.device) >= self.dropout
        return output * keep.to(output.dtype) / (1 - self.dropout)

    def _tap_hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            self.taps[name] = output.float().mean((2, 3))

        return hook
