"""Measure a cloak: does each face still match its original, and how visible is the change?

Every face of the original is looked for again in the cloaked photo (as a
scraper would: fresh detection, fresh alignment), then compared by each
judge: every loaded recogniser through its own template alignment, and dlib's
ResNet through dlib's own runtime and landmark predictor. A face the detector
no longer finds counts as protected: nothing matches it.

Each judge reports a *margin*: how far past its match threshold the pair is,
positive when it no longer calls them the same person (cosine: threshold -
similarity; dlib: distance - 0.6). One sign convention lets the holdout bench
and ``lowkeyd verify`` treat every recogniser alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from lowkeyd.engine.align import warp_faces
from lowkeyd.engine.faces import Face
from lowkeyd.engine.measures import grown_box
from lowkeyd.engine.models.base import FaceEmbedder
from lowkeyd.engine.perceptual import phase_averaged_lpips
from lowkeyd.engine.resident import ResidentModels
from lowkeyd.engine.social import social_pipeline
from lowkeyd.engine.verifier import DlibVerifier

# dlib's ResNet, judged through dlib's own runtime (its torch port, when it is an
# attack member, has the same name: a fold that holds "dlib" out holds out both).
DLIB = "dlib"
# The face region whose LPIPS is reported: the detector's box, grown by this fraction of its size.
FACE_MARGIN = 0.1
# The face region of the judge's LPIPS (and the bench's per-face pixel measures): the box grown by this on each side.
JUDGE_GROW = 0.25


class EmbedderJudge:
    """A torch recogniser as a judge: template alignment on fresh landmarks, cosine against its threshold."""

    measure = "cosine"

    def __init__(self, model: FaceEmbedder, device: torch.device) -> None:
        self.model = model
        self.name = model.name
        self.device = device
        self.rule = f">= {model.threshold:.3f}"

    @torch.no_grad()
    def identities(self, rgb: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        if not faces:
            return np.zeros((0, self.model.embedding_dim))
        image = _tensor(rgb, self.device)
        landmarks = torch.from_numpy(np.stack([f.landmarks for f in faces])).float().to(self.device)
        aligned = warp_faces(image.expand(len(faces), -1, -1, -1), landmarks, self.model.template, self.model.input_size)
        return self.model(aligned).float().cpu().numpy()

    def score(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.dot(a, b))

    def margin(self, score: float) -> float:
        return self.model.threshold - score


class DlibJudge:
    """dlib's ResNet in dlib's own runtime (dlib-bin): its landmarks, its alignment, L2 distance."""

    name = DLIB
    measure = "L2 distance"

    def __init__(self, verifier: DlibVerifier | None = None) -> None:
        self.verifier = verifier or DlibVerifier()
        self.rule = f"<= {self.verifier.threshold:.2f}"

    def identities(self, rgb: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        return self.verifier.descriptors(rgb, [f.corners for f in faces])

    def score(self, a: np.ndarray, b: np.ndarray) -> float:
        return self.verifier.distance(a, b)

    def margin(self, score: float) -> float:
        return score - self.verifier.threshold


Judge = EmbedderJudge | DlibJudge


@dataclass
class FaceCheck:
    box: tuple[float, float, float, float]
    size: float
    found: bool  # detected again in the cloaked photo
    scores: dict[str, float] = field(default_factory=dict)  # judge -> cosine or distance
    margins: dict[str, float] = field(default_factory=dict)  # judge -> how far past "no match" (> 0: protected)
    lpips: float | None = None  # face region, native resolution
    identity: dict[str, np.ndarray] | None = None  # per judge, the face as found in the cloaked photo

    @property
    def protected(self) -> dict[str, bool]:
        """Per judge: does it fail to match the face? (Every judge, when the face is not found again.)"""
        return {n: (not self.found) or m > 0 for n, m in self.margins.items()}


@dataclass
class Evaluation:
    faces: list[FaceCheck]
    psnr: float
    social: bool
    # Identity vectors of the largest face found in the cloaked (or social) photo: what a
    # scraper would match against the person's other photos; None when no face is found.
    probe: dict[str, np.ndarray] | None = None


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = np.maximum(a[:2], b[:2])
    x2, y2 = np.minimum(a[2:], b[2:])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _tensor(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.array(rgb, dtype=np.float32)).permute(2, 0, 1)[None].div(255).to(device)


def judges_for(models: Sequence[FaceEmbedder], device: torch.device) -> list[Judge]:
    """One judge per recogniser; dlib's through its own runtime (a torch port of it is not used to judge)."""
    return [EmbedderJudge(m, device) for m in models if m.name != DLIB] + [DlibJudge()]


class Evaluator:
    """Detector, judges and LPIPS, on a :class:`ResidentModels` bundle (a :class:`Cloaker`'s, to load nothing twice)."""

    def __init__(self, resident: ResidentModels) -> None:
        self.detector = resident.detector
        self.judges = judges_for(resident.recognisers, resident.device)
        self.lpips = resident.lpips
        self.device = resident.device

    @classmethod
    def load(cls, device: str | None = None) -> Evaluator:
        """Load the detector, every available recogniser and LPIPS."""
        return cls(ResidentModels.load(device))

    def identities(self, rgb: np.ndarray, faces: Sequence[Face]) -> dict[str, np.ndarray]:
        """Per judge, ``(N, D)`` identity vectors of ``faces`` in ``rgb``."""
        return {j.name: j.identities(rgb, faces) for j in self.judges}

    def match(self, a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[dict[str, float], dict[str, float]]:
        """Scores and margins of two faces' identity vectors (one face each, per judge)."""
        scores = {j.name: j.score(a[j.name], b[j.name]) for j in self.judges}
        return scores, {j.name: j.margin(s) for j, s in zip(self.judges, scores.values(), strict=True)}

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

    @torch.no_grad()
    def judge_lpips(self, original: np.ndarray, cloaked: np.ndarray, box: tuple[float, float, float, float]) -> float:
        """LPIPS-alex of the face box grown by :data:`JUDGE_GROW` on each side: one crop, native resolution.

        The issue's judge measures this way; it swings with the crop's phase
        (see :meth:`_face_lpips`), so it is reported beside the engine's
        measure, not instead of it.
        """
        xa, ya, xb, yb = grown_box(box, original.shape, JUDGE_GROW)
        a = _tensor(original[ya:yb, xa:xb], self.device) * 2 - 1
        b = _tensor(cloaked[ya:yb, xa:xb], self.device) * 2 - 1
        return float(self.lpips(a, b).mean())

    def compare(
        self,
        original: np.ndarray,
        cloaked: np.ndarray,
        *,
        social: bool = False,
        faces: Sequence[Face] | None = None,
        before: dict[str, np.ndarray] | None = None,
    ) -> Evaluation:
        """Each face of ``original`` against its counterpart in ``cloaked`` (after the social pipeline if asked).

        ``faces`` and ``before`` (the original's faces and their :meth:`identities`)
        may be passed in when one original is compared with several cloaks.
        """
        seen = social_pipeline(cloaked) if social else cloaked
        scale = seen.shape[1] / original.shape[1]
        faces = self.detector.detect(original) if faces is None else faces
        before = self.identities(original, faces) if before is None else before
        found = self.detector.detect(seen)
        after = self.identities(seen, found)
        twins = {}  # index in faces -> index in found
        for i, face in enumerate(faces):
            ious = [iou(face.box * scale, f.box) for f in found]
            if ious and max(ious) > 0.3:
                twins[i] = int(np.argmax(ious))
        same_size = cloaked.shape == original.shape
        checks = []
        for i, face in enumerate(faces):
            check = FaceCheck(face.corners, face.size, found=i in twins)
            check.lpips = self._face_lpips(original, cloaked, face) if same_size else None
            if check.found:
                check.identity = {n: v[twins[i]] for n, v in after.items()}
                check.scores, check.margins = self.match({n: v[i] for n, v in before.items()}, check.identity)
            else:
                check.margins = {j.name: math.inf for j in self.judges}
            checks.append(check)
        probe = {n: v[0] for n, v in after.items()} if found else None  # detect() sorts largest first
        return Evaluation(checks, psnr(original, cloaked) if same_size else math.nan, social, probe)

    def largest_face(self, rgb: np.ndarray) -> dict[str, np.ndarray] | None:
        """Identity vectors of the largest face of ``rgb`` (a cross-photo probe or gallery entry), None if none."""
        faces = self.detector.detect(rgb)
        return {n: v[0] for n, v in self.identities(rgb, faces[:1]).items()} if faces else None
