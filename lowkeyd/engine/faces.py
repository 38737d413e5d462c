"""Face detection: every face in a photo, with its box and five landmarks.

MTCNN (facenet-pytorch; its weights ship in the wheel, so it works offline).
MTCNN's cost is set by the smallest face it must find, measured in the
photo's own pixels (its image pyramid starts at ``12 / min_face``), so a big
photo is first scaled down to where that smallest face is ``_MTCNN_MIN_FACE``
pixels: the pyramid is the same, but the full-resolution tensor conversion and
resampling of a 12 MP photo are avoided.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

# Smallest face (box side, px) MTCNN itself is asked to find on the working image.
_MTCNN_MIN_FACE = 20
# Smallest face looked for by default, in the photo's own pixels. MTCNN's cost grows as
# 1 / min_face^2: on a 12 MP photo (2-core CPU) 3.4 s at 20 px, 2.7 s at 24 px, 1.5 s at 32 px.
DEFAULT_MIN_FACE = 24


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

    def scaled(self, factor: float) -> Face:
        return Face(self.box * factor, self.score, self.landmarks * factor)


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
            for b, p, pt in zip(boxes, probs, points)
            if p is not None and p >= self.min_score
        ]
        faces = [f for f in faces if f.size >= self.min_face]
        return sorted(faces, key=lambda f: f.size, reverse=True)
