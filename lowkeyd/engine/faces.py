"""Face detection: every face in a photo, with its box and five landmarks.

MTCNN (facenet-pytorch; its weights ship in the wheel, so it works offline).
MTCNN's cost is set by the smallest face it must find, measured in the
photo's own pixels (its image pyramid starts at ``12 / min_face``), so a big
photo is first scaled down to where that smallest face is ``_MTCNN_MIN_FACE``
pixels: the pyramid is the same, but the full-resolution tensor conversion and
resampling of a 12 MP photo are avoided.

MTCNN alone reports faces in blurred foliage, gravel and shiny metal (scores up to
0.98). Every candidate is therefore confirmed before it counts: its five landmarks
must be laid out like a face's, and ONet, shown the candidate again on shifted,
rescaled and mirrored windows, must still call it a face. Candidates that fail are
kept as :class:`Rejected`, with the reason, and logged.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

log = logging.getLogger(__name__)

# Smallest face (box side, px) MTCNN itself is asked to find on the working image.
_MTCNN_MIN_FACE = 20
# Smallest face looked for by default, in the photo's own pixels. MTCNN's cost grows as
# 1 / min_face^2: on a 12 MP photo (2-core CPU) 3.4 s at 20 px, 2.7 s at 24 px, 1.5 s at 32 px.
DEFAULT_MIN_FACE = 24

# Generous bounds on how a human face's five landmarks can lie (MTCNN finds faces up to
# about profile and 45 degrees of roll): every sample face at 24-400 px, blurred, dark,
# JPEG q40 or rolled 40 degrees is well inside them. ONet's landmark regression draws a
# face-like layout on most false candidates too, so this catches only the grossly wrong.
_EYES_PER_BOX = (0.15, 0.75)  # eye distance / box side
_MAX_ROLL_DEG = 60.0  # eye line against the horizontal
_MAX_YAW = 0.75  # nose's sideways offset from the eyes' midpoint / eye distance
_MOUTH_PER_EYES = (0.4, 1.7)  # mouth width / eye distance
_NOSE_DROP = (0.15, 1.3)  # nose below the eye line / eye distance
_MOUTH_DROP = (0.55, 2.0)  # mouth below the eye line / eye distance

# Second look: ONet scores each candidate again on re-cut windows, shifted by a tenth of
# the box, rescaled and mirrored. A face keeps its score when the window moves; blobs in
# foliage or reflections on metal that MTCNN's cascade happened to line up do not.
_VIEWS = (  # (dx, dy) as a fraction of the side, scale, mirrored
    ((0.0, 0.0), 1.0, False),
    ((0.0, 0.0), 1.0, True),
    ((-0.1, 0.0), 1.0, False),
    ((0.1, 0.0), 1.0, False),
    ((0.0, -0.1), 1.0, False),
    ((0.0, 0.1), 1.0, False),
    ((0.0, 0.0), 0.85, False),
    ((0.0, 0.0), 1.2, False),
)
_ONET_SIZE = 48
_MIN_SECOND_LOOK = 0.95  # median ONet probability over the views (see tests/data/noface/SOURCES.md)


@dataclass(frozen=True)
class Face:
    """One detected face, in the coordinates of the photo that was searched.

    ``landmarks`` are ``(5, 2)`` ``(x, y)`` in :data:`lowkeyd.engine.models.base.LANDMARKS` order.
    """

    box: np.ndarray  # (4,) x1, y1, x2, y2
    score: float
    landmarks: np.ndarray  # (5, 2)

    @property
    def size(self) -> float:
        """The longer side of the box, in pixels: what "a face of N px" means throughout lowkeyd."""
        x1, y1, x2, y2 = self.box
        return float(max(x2 - x1, y2 - y1))

    @property
    def corners(self) -> tuple[float, float, float, float]:
        """The box as plain floats ``(x1, y1, x2, y2)``, for reports."""
        x1, y1, x2, y2 = (float(v) for v in self.box)
        return x1, y1, x2, y2

    def scaled(self, factor: float) -> Face:
        return Face(self.box * factor, self.score, self.landmarks * factor)


@dataclass(frozen=True)
class Rejected:
    """A candidate MTCNN reported that the confirmation step turned down, and why."""

    face: Face
    reason: str


@dataclass(frozen=True)
class Detections:
    faces: list[Face] = field(default_factory=list)  # largest first
    rejected: list[Rejected] = field(default_factory=list)


def landmark_problem(landmarks: np.ndarray, box: np.ndarray) -> str | None:
    """Why five landmarks (``(5, 2)``, MTCNN order) in ``box`` cannot be a human face's; None if they can."""
    left_eye, right_eye, nose, mouth_left, mouth_right = np.asarray(landmarks, dtype=np.float64)
    eye_line = right_eye - left_eye
    eyes = float(np.hypot(*eye_line))
    side = float(max(box[2] - box[0], box[3] - box[1]))
    if not _EYES_PER_BOX[0] * side <= eyes <= _EYES_PER_BOX[1] * side:
        return f"eyes {eyes / max(side, 1e-9):.2f} of the box apart"
    roll = float(np.degrees(np.arctan2(eye_line[1], eye_line[0])))
    if abs(roll) > _MAX_ROLL_DEG:
        return f"eye line at {roll:.0f} degrees"
    # Into the face's own frame: x along the eye line, y down the face, in eye distances.
    cos, sin = eye_line / eyes
    centre = (left_eye + right_eye) / 2

    def upright(point: np.ndarray) -> np.ndarray:
        dx, dy = point - centre
        return np.array([cos * dx + sin * dy, -sin * dx + cos * dy]) / eyes

    nose_at, mouth_at = upright(nose), upright((mouth_left + mouth_right) / 2)
    mouth_line = upright(mouth_right) - upright(mouth_left)
    if not _NOSE_DROP[0] <= nose_at[1] <= _NOSE_DROP[1]:
        return f"nose {nose_at[1]:.2f} eye distances below the eyes"
    if not _MOUTH_DROP[0] <= mouth_at[1] <= _MOUTH_DROP[1] or mouth_at[1] <= nose_at[1]:
        return f"mouth {mouth_at[1]:.2f} eye distances below the eyes (nose {nose_at[1]:.2f})"
    if abs(nose_at[0]) > _MAX_YAW:
        return f"nose {nose_at[0]:+.2f} eye distances off the eyes' midpoint"
    if not _MOUTH_PER_EYES[0] <= mouth_line[0] <= _MOUTH_PER_EYES[1]:
        return f"mouth {mouth_line[0]:.2f} eye distances wide"
    return None


class FaceDetector:
    """Finds faces of at least ``min_face`` px (box side, in the photo's own pixels).

    ``min_score`` is MTCNN's final-stage probability below which a detection is dropped.
    """

    def __init__(
        self, device: str | torch.device = "cpu", *, min_face: int = DEFAULT_MIN_FACE, min_score: float = 0.9
    ) -> None:
        from facenet_pytorch import MTCNN

        self.min_face = min_face
        self.min_score = min_score
        self._mtcnn = MTCNN(keep_all=True, min_face_size=_MTCNN_MIN_FACE, device=torch.device(device))
        # MTCNN keeps no state between calls, but its modules are shared: serialise use
        # so one resident detector can serve several threads (the daemon's API and watcher).
        self._lock = threading.Lock()

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """All faces in an ``(H, W, 3)`` uint8 RGB image, largest first."""
        return self.find(rgb).faces

    def find(self, rgb: np.ndarray) -> Detections:
        """The faces of :meth:`detect`, and the candidates turned down as not faces (logged, with the reason)."""
        candidates = self._candidates(rgb)
        found = Detections()
        for face, looks in zip(candidates, self._second_look(rgb, candidates), strict=True):
            reason = landmark_problem(face.landmarks, face.box)
            if reason is None and float(np.median(looks)) < _MIN_SECOND_LOOK:
                reason = f"second look {np.median(looks):.2f}"
            if reason is None:
                found.faces.append(face)
            else:
                found.rejected.append(Rejected(face, reason))
                box = ", ".join(f"{v:.0f}" for v in face.box)
                log.info(
                    "face candidate at (%s), score %.3f, rejected (%s)",
                    box,
                    face.score,
                    reason,
                )
        return found

    def _candidates(self, rgb: np.ndarray) -> list[Face]:
        """What MTCNN reports at ``min_score`` and ``min_face``, largest first."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
        scale = min(1.0, _MTCNN_MIN_FACE / self.min_face)
        image = Image.fromarray(rgb)
        if scale < 1.0:
            size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
            image = image.resize(size, Image.Resampling.BOX)
            scale_back = np.array([rgb.shape[1] / size[0], rgb.shape[0] / size[1]])
        else:
            scale_back = np.ones(2)
        if min(image.size) < _MTCNN_MIN_FACE:
            return []  # smaller than the smallest face MTCNN looks for: its image pyramid would be empty
        with self._lock, torch.no_grad():
            boxes, probs, points = self._mtcnn.detect(image, landmarks=True)
        if boxes is None:
            return []
        faces = [
            Face(
                box=(np.asarray(b, dtype=np.float64).reshape(2, 2) * scale_back).reshape(4),
                score=float(p),
                landmarks=np.asarray(pt, dtype=np.float64) * scale_back,
            )
            for b, p, pt in zip(boxes, probs, points, strict=True)
            if p is not None and p >= self.min_score
        ]
        faces = [f for f in faces if f.size >= self.min_face]
        return sorted(faces, key=lambda f: f.size, reverse=True)

    def _second_look(self, rgb: np.ndarray, faces: list[Face]) -> np.ndarray:
        """``(faces, views)``: ONet's face probability for each candidate on each of :data:`_VIEWS`."""
        if not faces:
            return np.zeros((0, len(_VIEWS)))
        windows = []
        for face in faces:
            centre = (face.box[:2] + face.box[2:]) / 2
            for (dx, dy), scale, mirrored in _VIEWS:
                side = face.size * scale
                window = _window(rgb, centre + np.array([dx, dy]) * face.size, side)
                windows.append(window.flip(-1) if mirrored else window)
        batch = (torch.stack(windows) - 127.5) * 0.0078125  # MTCNN's own input scaling
        with self._lock, torch.no_grad():
            probability = self._mtcnn.onet(batch.to(self._mtcnn.device))[2][:, 1]
        return probability.cpu().numpy().reshape(len(faces), len(_VIEWS))


def _window(rgb: np.ndarray, centre: np.ndarray, side: float) -> torch.Tensor:
    """The square of ``side`` px around ``centre`` as ONet's ``(3, 48, 48)`` float input; zero outside the photo."""
    half = side / 2
    x0, y0 = (int(np.floor(v - half)) for v in centre)
    n = max(1, int(np.ceil(side)))
    crop = np.zeros((n, n, 3), np.float32)
    h, w = rgb.shape[:2]
    xs, ys = slice(max(x0, 0), min(x0 + n, w)), slice(max(y0, 0), min(y0 + n, h))
    if xs.start < xs.stop and ys.start < ys.stop:
        crop[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0] = rgb[ys, xs]
    tensor = torch.from_numpy(crop).permute(2, 0, 1)[None]
    return F.interpolate(tensor, size=(_ONET_SIZE, _ONET_SIZE), mode="bilinear", antialias=True, align_corners=False)[0]
