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
    # Gradients reach exactly the pixels the warp samples (OpenCV's map, taken back into the photo), nothing else.
    grad = image.grad[0].abs().sum(0).numpy()
    assert np.isfinite(grad).all()
    sampled = _bilinear_footprint(matrix, (160, 160), rgb.shape[:2])
    assert 0.01 < sampled.mean() < 0.5, "the face is a small part of the photo: a real test of locality"
    # One pixel of slack: torch's and OpenCV's coordinates differ in the last float bits.
    near = cv2.dilate(sampled.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert grad[~near].max() == 0, f"gradient reaches {np.count_nonzero(grad[~near])} pixels the warp never samples"
    # The face is downscaled to 160 px: the pixels read are scattered, and each one is weighted.
    assert (grad[sampled] > 0).mean() > 0.95, "gradient misses pixels the warp samples"


def _bilinear_footprint(matrix: np.ndarray, size: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """The photo's pixels a bilinear warp by ``matrix`` (photo to output) reads for an output of ``size``."""
    h, w = shape
    inverse = cv2.invertAffineTransform(matrix)
    v, u = np.mgrid[: size[1], : size[0]]
    x = inverse[0, 0] * u + inverse[0, 1] * v + inverse[0, 2]
    y = inverse[1, 0] * u + inverse[1, 1] * v + inverse[1, 2]
    footprint = np.zeros(shape, bool)
    for dx in (0, 1):
        for dy in (0, 1):
            # Outside the photo the edge pixel is repeated: clamping says which one is read.
            footprint[np.clip(np.floor(y) + dy, 0, h - 1).astype(int), np.clip(np.floor(x) + dx, 0, w - 1).astype(int)] = True
    return footprint
