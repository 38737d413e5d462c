"""Detections are confirmed before they count as faces: real photos without people give none, real faces stay."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DATA, PHOTOS, detected_face, load_rgb
from PIL import Image

from lowkeyd.engine.faces import landmark_problem

NOFACE = sorted((DATA / "noface").glob("*.jpg"))
# Texture and photo crops on which MTCNN alone reports a face with score >= 0.9 (SOURCES.md).
FOOLED_MTCNN = (
    "grass_b.jpg",
    "gravel_b.jpg",
    "gravel_c.jpg",
    "texture_31.jpg",
    "texture_43.jpg",
)

# An upright frontal face in a 100 px box: eyes, nose, mouth corners.
FRONTAL = np.array([[35.0, 40.0], [65.0, 40.0], [50.0, 55.0], [38.0, 72.0], [62.0, 72.0]])
BOX = np.array([10.0, 10.0, 90.0, 100.0])


def _rotated(points: np.ndarray, degrees: float) -> np.ndarray:
    angle = np.radians(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = points.mean(0)
    return (points - centre) @ rotation.T + centre


def _with(points: np.ndarray, index: int, xy: tuple[float, float]) -> np.ndarray:
    changed = points.copy()
    changed[index] = xy
    return changed


@pytest.mark.parametrize(
    ("landmarks", "expected"),
    [
        (FRONTAL, None),
        (_rotated(FRONTAL, 30), None),
        (_rotated(FRONTAL, -45), None),
        (_with(FRONTAL, 2, (62.0, 55.0)), None),  # turned: nose towards one eye
        (_rotated(FRONTAL, 80), "eye line"),
        (_rotated(FRONTAL, 180), "eye line"),  # upside down
        (FRONTAL * [0.2, 1] + [40, 0], "eyes"),  # eyes 6 px apart in an 80 px box
        (_with(FRONTAL, 2, (50.0, 35.0)), "nose"),  # nose above the eyes
        (
            _with(_with(FRONTAL, 3, (38.0, 50.0)), 4, (62.0, 50.0)),
            "mouth",
        ),  # mouth above the nose
        (_with(FRONTAL, 2, (80.0, 55.0)), "off the eyes"),  # nose beside the face
        (_with(_with(FRONTAL, 3, (15.0, 72.0)), 4, (85.0, 72.0)), "wide"),
        (
            _with(_with(FRONTAL, 3, (62.0, 72.0)), 4, (38.0, 72.0)),
            "wide",
        ),  # mouth corners swapped
    ],
)
def test_landmark_geometry(landmarks, expected):
    problem = landmark_problem(landmarks, BOX)
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and expected in problem


def test_sample_faces_have_face_geometry():
    for name in PHOTOS:
        face = detected_face(name)
        assert landmark_problem(face.landmarks, face.box) is None, name


@pytest.mark.parametrize("path", NOFACE, ids=lambda p: p.name)
def test_no_face_in_photos_without_people(detector, path):
    with Image.open(path) as im:
        found = detector.find(np.asarray(im.convert("RGB")))
    assert found.faces == []
    # Where MTCNN alone is fooled, the confirmation step is what turns it down, and says why.
    assert bool(found.rejected) == (path.name in FOOLED_MTCNN)
    assert all(r.reason for r in found.rejected)


@pytest.mark.parametrize("name", PHOTOS)
def test_every_sample_face_is_kept_from_28_px_up(detector, name):
    """Each sample photo scaled so its face spans 28-300 px (and after JPEG q75 from 32 px): the face is found.

    Below that MTCNN itself loses some of them (boxes under 24 px; obama.jpg at 28 px after JPEG), with or
    without the confirmation step.
    """
    import io

    full = detected_face(name)
    with Image.open(DATA / name) as im:
        photo = im.convert("RGB")
    for target in (28, 32, 40, 60, 120, 200, 300):
        scale = target / full.size
        if scale > 1:
            continue
        small = photo.resize(
            (round(photo.width * scale), round(photo.height * scale)),
            Image.Resampling.LANCZOS,
        )
        buffer = io.BytesIO()
        small.save(buffer, "JPEG", quality=75)
        variants = [("png", small)] + ([("jpeg", Image.open(buffer))] if target >= 32 else [])
        for variant, image in variants:
            rgb = np.asarray(image.convert("RGB"))
            centre = (full.box[:2] + full.box[2:]) / 2 * scale
            faces = detector.find(rgb).faces
            hits = [f for f in faces if np.abs((f.box[:2] + f.box[2:]) / 2 - centre).max() < 0.5 * target]
            assert len(hits) == 1, f"{name} at {target} px ({variant}): {len(faces)} faces, none at the face"


def test_detect_is_find_faces(detector):
    rgb = load_rgb("astronaut.png")
    assert [f.box.tolist() for f in detector.detect(rgb)] == [f.box.tolist() for f in detector.find(rgb).faces]
