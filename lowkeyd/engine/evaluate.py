"""Measure a cloak: does each face still match its original, and how visible is the change?

Every face of the original is looked for again in the cloaked photo (as a
scraper would: fresh detection, fresh alignment), then compared by each
ensemble member and by the independent dlib verifier, which the attack never
saw. A face the detector no longer finds counts as protected: nothing matches it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from lowkeyd.engine.align import warp_faces
from lowkeyd.engine.faces import Face, FaceDetector
from lowkeyd.engine.models.base import FaceEmbedder
from lowkeyd.engine.perceptual import phase_averaged_lpips
from lowkeyd.engine.social import social_pipeline
from lowkeyd.engine.verifier import DlibVerifier

VERIFIER = "dlib"
# The face region whose LPIPS is reported: the detector's box, grown by this fraction of its size.
FACE_MARGIN = 0.1


@dataclass
class FaceCheck:
    box: tuple[float, float, float, float]
    size: float
    found: bool  # detected again in the cloaked photo
    similarity: dict[str, float] = field(default_factory=dict)  # ensemble member -> cosine
    thresholds: dict[str, float] = field(default_factory=dict)
    dlib_distance: float | None = None
    dlib_threshold: float = DlibVerifier.threshold
    lpips: float | None = None  # face region, native resolution

    @property
    def protected(self) -> dict[str, bool]:
        """Per recogniser (ensemble members and ``dlib``): does it fail to match the face?"""
        verdict = {n: (not self.found) or s < self.thresholds[n] for n, s in self.similarity.items()}
        verdict[VERIFIER] = (not self.found) or (self.dlib_distance or 0.0) > self.dlib_threshold
        return verdict

    @property
    def protected_by_verifier(self) -> bool:
        return self.protected[VERIFIER]


@dataclass
class Evaluation:
    faces: list[FaceCheck]
    psnr: float
    social: bool


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = np.maximum(a[:2], b[:2])
    x2, y2 = np.minimum(a[2:], b[2:])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _tensor(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.array(rgb, dtype=np.float32)).permute(2, 0, 1)[None].div(255).to(device)


class Evaluator:
    """Ensemble + independent verifier + LPIPS; reuse a :class:`Cloaker`'s resident models with :meth:`sharing`."""

    def __init__(
        self,
        detector: FaceDetector,
        models: Sequence[FaceEmbedder],
        lpips: torch.nn.Module,
        device: torch.device,
    ) -> None:
        self.detector = detector
        self.models = list(models)
        self.lpips = lpips
        self.device = device
        self.verifier = DlibVerifier()

    @classmethod
    def sharing(cls, cloaker) -> Evaluator:  # noqa: ANN001 - a lowkeyd.engine.cloak.Cloaker
        """An evaluator on a cloaker's resident models (no second load)."""
        return cls(cloaker.detector, cloaker.models, cloaker.lpips, cloaker.device)

    @classmethod
    def load(cls, device: str | None = None) -> Evaluator:
        """Load the detector, every available recogniser and LPIPS."""
        from lowkeyd.engine.device import pick_device, set_cpu_threads
        from lowkeyd.engine.models.zoo import available_embedders, load_embedder
        from lowkeyd.engine.perceptual import load_lpips

        dev = pick_device(device)
        if dev.type == "cpu":
            set_cpu_threads()
        models = [load_embedder(n, dev) for n in available_embedders()]
        return cls(FaceDetector(dev), models, load_lpips(dev, spatial=True), dev)

    @torch.no_grad()
    def _embed(self, rgb: np.ndarray, face: Face) -> dict[str, torch.Tensor]:
        image = _tensor(rgb, self.device)
        landmarks = torch.from_numpy(face.landmarks)[None].to(self.device)
        return {
            m.name: m(warp_faces(image, landmarks, m.template, m.input_size))[0] for m in self.models
        }

    @torch.no_grad()
    def _face_lpips(self, original: np.ndarray, cloaked: np.ndarray, face: Face) -> float:
        """LPIPS of the face region, averaged over the 16 pixel phases of AlexNet's stride-4 grid.

        LPIPS of one crop swings by 2-3x when the crop moves by a pixel (its
        first layer has stride 4), and an attack that keeps LPIPS small can end
        up hiding in that grid; averaging over every phase measures the change
        itself.
        """
        x1, y1, x2, y2 = face.box
        pad = FACE_MARGIN * face.size
        h, w = original.shape[:2]
        ya, yb = max(0, int(y1 - pad)), min(h, int(math.ceil(y2 + pad)))
        xa, xb = max(0, int(x1 - pad)), min(w, int(math.ceil(x2 + pad)))
        a = _tensor(original[ya:yb, xa:xb], self.device) * 2 - 1
        b = _tensor(cloaked[ya:yb, xa:xb], self.device) * 2 - 1
        return float(phase_averaged_lpips(self.lpips, a, b))

    def compare(self, original: np.ndarray, cloaked: np.ndarray, *, social: bool = False) -> Evaluation:
        """Each face of ``original`` against its counterpart in ``cloaked`` (after the social pipeline if asked)."""
        seen = social_pipeline(cloaked) if social else cloaked
        scale = seen.shape[1] / original.shape[1]
        faces = self.detector.detect(original)
        found = self.detector.detect(seen)
        same_size = cloaked.shape == original.shape
        thresholds = {m.name: m.threshold for m in self.models}
        checks = []
        for face in faces:
            check = FaceCheck(tuple(float(v) for v in face.box), face.size, found=False, thresholds=thresholds)
            check.lpips = self._face_lpips(original, cloaked, face) if same_size else None
            ious = [_iou(face.box * scale, f.box) for f in found]
            if ious and max(ious) > 0.3:
                twin = found[int(np.argmax(ious))]
                check.found = True
                before, after = self._embed(original, face), self._embed(seen, twin)
                check.similarity = {n: float((before[n] * after[n]).sum()) for n in before}
                d0 = self.verifier.descriptors(original, [face.box])[0]
                d1 = self.verifier.descriptors(seen, [twin.box])[0]
                check.dlib_distance = self.verifier.distance(d0, d1)
            checks.append(check)
        return Evaluation(checks, psnr(original, cloaked) if same_size else math.nan, social)

    def verifier_distance(self, a: np.ndarray, b: np.ndarray) -> float | None:
        """dlib distance between the largest faces of two photos (cross-photo identity), None if one has none."""
        descriptors = []
        for rgb in (a, b):
            faces = self.detector.detect(rgb)
            if not faces:
                return None
            descriptors.append(self.verifier.descriptors(rgb, [faces[0].box])[0])
        return self.verifier.distance(*descriptors)
