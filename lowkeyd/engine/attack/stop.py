"""When a face is done: every member sees the published view past its target.

A member's target is on its own scale: ``target`` of the way from its match
threshold (0) to the similarity of a typical stranger (1), so 2 means the face
looks twice as far past the threshold as a stranger does. Early stopping at a
margin rather than running every step is how the attack stays inside the
budget's cheap part on easy faces (C&W-style confidence, Carlini and Wagner,
S&P 2017, as a stop rather than a loss).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lowkeyd.engine.models.base import FaceEmbedder
from lowkeyd.engine.presets import Preset


def member_targets(models: Sequence[FaceEmbedder], target: float | None) -> dict[str, float]:
    """Each member's target cosine: the face counts as done for it at or below this similarity."""
    return {m.name: m.threshold - (target or 0) * (m.threshold - m.stranger) for m in models}


class StopRule:
    """Tracks, per member and face, whether its last look was past the target.

    ``pulling(name, idx)`` says which faces a member still pulls (the feature
    term's focus); ``done(idx)`` which faces are finished, decided on the
    published (plain) view only.
    """

    def __init__(self, models: Sequence[FaceEmbedder], preset: Preset, faces: int, device: torch.device) -> None:
        self.preset = preset
        self.targets = member_targets(models, preset.target)
        self.past = {m.name: torch.zeros(faces, dtype=torch.bool, device=device) for m in models}
        self.plain_past = {m.name: torch.zeros(faces, dtype=torch.bool, device=device) for m in models}

    def look(self, name: str, idx: torch.Tensor, cos: torch.Tensor, plain: bool) -> None:
        """Record member ``name``'s similarity ``cos`` ``(b,)`` (the best over the step's views) for faces ``idx``."""
        past = cos <= self.targets[name]
        self.past[name][idx] = past
        if plain:
            self.plain_past[name][idx] = past

    def pulling(self, name: str, idx: torch.Tensor) -> torch.Tensor:
        return ~self.past[name][idx]

    def done(self, idx: torch.Tensor, step: int) -> torch.Tensor:
        """``(b,)`` bool: faces ``idx`` that every member saw past its target on the published view."""
        if self.preset.target is None or step < self.preset.min_steps:
            return torch.zeros(idx.numel(), dtype=torch.bool, device=idx.device)
        return torch.stack([v[idx] for v in self.plain_past.values()]).all(0)
