"""The engine's models, loaded once and shared: the face detector, the recognisers, LPIPS, and where they run.

A :class:`~lowkeyd.engine.cloak.Cloaker` attacks with them and an
:class:`~lowkeyd.engine.evaluate.Evaluator` judges with them; a bench or a
holdout run builds both on one bundle, so nothing is loaded twice. Loading is
also where the engine takes its CPU threads, once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from lowkeyd.engine.device import pick_device, set_cpu_threads
from lowkeyd.engine.faces import DEFAULT_MIN_FACE, FaceDetector
from lowkeyd.engine.models.base import FaceEmbedder
from lowkeyd.errors import EngineError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResidentModels:
    device: torch.device
    recognisers: tuple[FaceEmbedder, ...]
    lpips: torch.nn.Module  # spatial: a per-pixel map, so a distance can be taken over any region
    detector: FaceDetector  # faces from DEFAULT_MIN_FACE up

    @classmethod
    def load(
        cls, device: str | None = None, *, recognisers: Sequence[str] | None = None, threads: int | None = None
    ) -> ResidentModels:
        """Load every available recogniser (or those named), LPIPS and the detector onto ``device`` (default: the best).

        On a CPU, torch gets ``threads`` threads (default: ``LOWKEYD_THREADS``, else the idle cores).
        """
        from lowkeyd.engine.models.zoo import available_embedders, load_embedder
        from lowkeyd.engine.perceptual import load_lpips

        where = pick_device(device)
        if where.type == "cpu":
            log.debug("torch uses %d CPU thread(s)", set_cpu_threads(threads))
        return cls(
            where,
            tuple(load_embedder(n, where) for n in (recognisers or available_embedders())),
            load_lpips(where, spatial=True),
            FaceDetector(where, min_face=DEFAULT_MIN_FACE),
        )

    def only(self, names: Sequence[str]) -> ResidentModels:
        """The same bundle with the recognisers ``names`` alone (a holdout fold's ensemble); nothing is loaded."""
        unknown = set(names) - {m.name for m in self.recognisers}
        if unknown:
            raise EngineError(f"not loaded: {', '.join(sorted(unknown))}")
        return replace(self, recognisers=tuple(m for m in self.recognisers if m.name in names))

    def detector_for(self, min_face: int) -> FaceDetector:
        """A detector finding faces from ``min_face`` px up: the resident one, unless a smaller size is asked for."""
        return self.detector if min_face >= self.detector.min_face else FaceDetector(self.device, min_face=min_face)
