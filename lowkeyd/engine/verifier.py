"""The independent verifier: dlib's face recognition ResNet, never part of the attack ensemble.

A cloak is judged by a model it was not computed against, so success means
something beyond the ensemble. dlib's own runtime (the prebuilt ``dlib-bin``
wheel) runs the verified weight files exactly as dlib users do; no gradients
are needed here.

Boxes: dlib's 5-point shape predictor was trained on the boxes of dlib's HOG
detector, which are square and sit lower and tighter than MTCNN's (MTCNN's
include the forehead). Fed raw MTCNN boxes, its landmarks shift and the
descriptors moved by up to 0.15 (L2) on the sample photos, a quarter of the
match threshold. Each MTCNN box is therefore mapped onto where dlib's detector
puts its box (square, side 1.07 x the MTCNN width, centred on the box
horizontally and at 54% of its height; fitted on the sample photos), which
brought descriptors within 0.09 of those from dlib's own boxes, about the
spread dlib's detector itself shows as its box snaps to its scale pyramid.
Running dlib's detector instead would fail on faces under 80 px and could
treat a clean and a cloaked photo differently; the mapping is deterministic.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from lowkeyd.engine.weights import weight_path
from lowkeyd.errors import EngineError

_SIDE_PER_WIDTH = 1.07
_CENTRE_Y_PER_HEIGHT = 0.54


def dlib_box(box: Sequence[float]) -> tuple[int, int, int, int]:
    """The box dlib's HOG detector would give for a face MTCNN boxed as ``(x1, y1, x2, y2)``."""
    x1, y1, x2, y2 = (float(v) for v in box)
    half = _SIDE_PER_WIDTH * (x2 - x1) / 2
    cx, cy = (x1 + x2) / 2, y1 + _CENTRE_Y_PER_HEIGHT * (y2 - y1)
    return round(cx - half), round(cy - half), round(cx + half), round(cy + half)


class DlibVerifier:
    """128-d dlib face descriptors; two faces match when their L2 distance is at most :attr:`threshold`."""

    threshold = 0.6  # dlib's documented threshold for this model

    def __init__(self) -> None:
        import dlib

        self._dlib = dlib
        self._landmarks = dlib.shape_predictor(str(weight_path("dlib_shape_predictor_5")))
        self._net = dlib.face_recognition_model_v1(str(weight_path("dlib_resnet_v1")))
        # dlib's networks keep scratch buffers per object: one caller at a time.
        self._lock = threading.Lock()

    def descriptors(self, image: np.ndarray, boxes: Sequence[Sequence[float]]) -> np.ndarray:
        """Descriptors ``(N, 128)`` of the faces at MTCNN ``boxes`` in an ``(H, W, 3)`` uint8 RGB ``image``."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise EngineError(f"the verifier needs an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
        if len(boxes) == 0:
            return np.zeros((0, 128))
        image = np.ascontiguousarray(image)
        shapes = self._dlib.full_object_detections()
        with self._lock:
            for box in boxes:
                shapes.append(self._landmarks(image, self._dlib.rectangle(*dlib_box(box))))
            # num_jitters=0: one deterministic pass per face.
            return np.array(self._net.compute_face_descriptor(image, shapes, num_jitters=0))

    @staticmethod
    def distance(a: np.ndarray, b: np.ndarray) -> float:
        """L2 distance between two descriptors."""
        return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))
