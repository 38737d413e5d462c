import cv2
import numpy as np
import pytest
import torch

from conftest import PHOTOS, detected_face, load_rgb
from lowkeyd.engine.align import similarity_transform, warp_faces
from lowkeyd.engine.models.facenet import FACENET_TEMPLATE


@pytest.mark.parametrize("name", PHOTOS)
def test_mtcnn_finds_exactly_one_face(detector, name):
    faces = detector.detect(load_rgb(name))
    assert len(faces) == 1
    face = faces[0]
    x1, y1, x2, y2 = face.box
    # The landmarks sit inside the box, eyes above the mouth.
    assert np.all((face.landmarks[:, 0] > x1) & (face.landmarks[:, 0] < x2))
    assert face.landmarks[0, 1] < face.landmarks[3, 1] and face.landmarks[1, 1] < face.landmarks[4, 1]


def test_downscaled_detection_maps_back_to_full_resolution(detector):
    """A face found on the downscaled copy lands where it is in the original photo."""
    from lowkeyd.engine.faces import FaceDetector

    rgb = load_rgb("obama.jpg")
    native = detector.detect(rgb)[0]
    downscaled = FaceDetector(min_face=80).detect(rgb)[0]  # scans a quarter-size copy
    # Boxes wobble between pyramid scales by several percent; landmarks are what alignment uses.
    assert np.abs(native.box - downscaled.box).max() < 0.1 * native.size
    assert np.abs(native.landmarks - downscaled.landmarks).max() < 0.03 * native.size


def test_no_face_in_a_faceless_image(detector):
    sky = np.full((400, 600, 3), (120, 160, 220), np.uint8)
    assert detector.detect(sky) == []


def test_similarity_transform_matches_opencv():
    landmarks = detected_face("obama2.jpg").landmarks
    expected, _ = cv2.estimateAffinePartial2D(landmarks.astype(np.float32), FACENET_TEMPLATE.numpy(), method=cv2.LMEDS)
    ours = similarity_transform(torch.from_numpy(landmarks), FACENET_TEMPLATE).numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("name", ["obama.jpg", "biden.jpg"])
def test_warp_matches_opencv_and_carries_gradients(name):
    rgb = load_rgb(name)
    landmarks = detected_face(name).landmarks
    matrix, _ = cv2.estimateAffinePartial2D(landmarks.astype(np.float32), FACENET_TEMPLATE.numpy(), method=cv2.LMEDS)
    expected = cv2.warpAffine(
        rgb.astype(np.float32) / 255, matrix, (160, 160), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    image = (torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255).requires_grad_()
    warped = warp_faces(image, torch.from_numpy(landmarks)[None], FACENET_TEMPLATE, (160, 160))
    assert np.abs(warped[0].permute(1, 2, 0).detach().numpy() - expected).max() < 1e-3
    warped.sum().backward()
    # Gradients reach exactly the pixels around the face, nothing far away.
    grad = image.grad[0].abs().sum(0)
    assert torch.isfinite(grad).all() and grad.sum() > 0
    x1, y1, x2, y2 = detected_face(name).box
    assert grad[: max(0, int(y1) - 200)].sum() == 0
