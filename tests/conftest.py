"""Shared fixtures: the real sample photos, their detected faces, and aligned crops."""

from __future__ import annotations

import functools
from pathlib import Path

import chromium
import numpy as np
import pytest
import torch
from PIL import Image

DATA = Path(__file__).parent / "data"
PHOTOS = ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "astronaut.png")
SAME_PERSON = ("obama.jpg", "obama2.jpg", "obama3.jpg")
OTHER_PEOPLE = ("biden.jpg", "astronaut.png")

# Two cores: torch's default thread count fights with anything else running (see engine/device.py).
torch.set_num_threads(2)


@functools.cache
def load_rgb(name: str) -> np.ndarray:
    with Image.open(DATA / name) as im:
        return np.asarray(im.convert("RGB"))


@functools.cache
def _detector():
    from lowkeyd.engine.faces import FaceDetector

    return FaceDetector()


@functools.cache
def detected_face(name: str):
    """The one face of a sample photo."""
    faces = _detector().detect(load_rgb(name))
    assert len(faces) == 1, f"{name}: expected one face, found {len(faces)}"
    return faces[0]


def aligned_face(name: str, template: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(1, 3, h, w)`` float [0, 1] aligned face of a sample photo, via the project's own warp."""
    from lowkeyd.engine.align import warp_faces

    rgb = torch.from_numpy(load_rgb(name).copy()).permute(2, 0, 1)[None].float() / 255
    landmarks = torch.from_numpy(detected_face(name).landmarks)[None]
    return warp_faces(rgb, landmarks, template, size)


def aligned_for(embedder) -> dict[str, torch.Tensor]:
    """Every sample photo's face aligned for ``embedder`` (a FaceEmbedder)."""
    return {name: aligned_face(name, embedder.template, embedder.input_size) for name in PHOTOS}


def assert_identity_sanity(similarity: dict[tuple[str, str], float]) -> None:
    """Every same-person pair is more similar than any pair of obama vs another person."""
    same = [similarity[a, b] for a in SAME_PERSON for b in SAME_PERSON if a < b]
    other = [similarity[a, b] for a in SAME_PERSON for b in OTHER_PEOPLE]
    assert min(same) > max(other), f"same-person {same} vs other {other}"


@pytest.fixture(scope="session")
def detector():
    return _detector()


@pytest.fixture
def chrome(tmp_path: Path):
    """Headless Chromium (``chromium.open_chrome``), quit after the test."""
    yield from chromium.open_chrome(tmp_path / "profile")
