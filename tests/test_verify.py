"""``lowkeyd verify``, the check setup runs as its proof: real processes, real models, a real cloak.

A cloaked copy (made by ``lowkeyd cloak``: the default preset with a larger step) must be reported protected
against every recogniser; the original against itself must not be. Exit status 0 means no
recogniser matches any face, 1 that one does; bad input is a one-line error before any model loads.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from daemon_fixtures import face_photo, faceless_photo
from lowkeyd.cli.verify import difference_picture
from lowkeyd.engine.models.zoo import available_embedders
from lowkeyd.photo import read_photo

pytestmark = pytest.mark.slow

LOWKEYD = Path(sys.executable).parent / "lowkeyd"
TIMEOUT = 900  # a model load and a few faces on a busy 2-core machine
# Wide enough that rich keeps each table row and message on one line.
ENV = {**os.environ, "COLUMNS": "250"}
# The default preset with the widest budget and eight large steps: every member past its threshold, and
# the face is still found, so every recogniser is asked.
ATTACK = {"budget": 4.0, "step_size": 0.01, "steps": 8}
# Every recogniser lowkeyd has weights for judges; dlib through its own runtime.
JUDGES = tuple(available_embedders())


def verify(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LOWKEYD), "verify", *map(str, args)], capture_output=True, text=True, timeout=TIMEOUT, env=ENV, check=False
    )


def judge_rows(stdout: str) -> dict[str, str]:
    """Each recogniser's table row, by name (one face per photo here)."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃").split("│")]
        if len(cells) == 6 and cells[0] in JUDGES:
            rows[cells[0]] = line
    return rows


def protected_column(stdout: str) -> dict[str, str]:
    return {name: row.strip().strip("│").split("│")[5].strip() for name, row in judge_rows(stdout).items()}


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(original, its cloaked copy by lowkeyd cloak)."""
    base = tmp_path_factory.mktemp("verify")
    original = base / "face.jpg"
    original.write_bytes(face_photo(1))
    overrides = [f"--set={k}={v}" for k, v in ATTACK.items()]
    done = subprocess.run(
        # --mark: the tag names the attack's members, which verify then calls white-box.
        [str(LOWKEYD), "cloak", str(original), "-o", str(base / "cloaked"), "--no-daemon", "--mark", *overrides],
        capture_output=True, text=True, timeout=TIMEOUT, env=ENV, check=False,
    )
    assert done.returncode == 0, done.stderr
    return original, base / "cloaked" / "face.jpg"


@pytest.mark.parametrize(
    ("against", "status", "marker", "protected", "verdict"),
    [
        ("its cloaked copy", 0, "face.jpg: cloaked by lowkeyd (version ", "yes", "every face protected against"),
        # Unmarked: every recogniser counts as an attack member, and every one matches the face to itself.
        ("itself", 1, "face.jpg: carries no lowkeyd marker", "no", "NOT protected: a recogniser still matches a face against"),
    ],
)
def test_the_verdict_per_recogniser_and_the_exit_status(
    photos: tuple[Path, Path], against: str, status: int, marker: str, protected: str, verdict: str
) -> None:
    original, cloaked = photos
    done = verify(original, cloaked if against == "its cloaked copy" else original)
    assert done.returncode == status, done.stdout + done.stderr
    assert marker in done.stdout
    assert protected_column(done.stdout) == dict.fromkeys(JUDGES, protected), done.stdout
    assert f"{verdict} {len(JUDGES)} recognisers" in done.stdout
    assert "LPIPS (alex) of the face region: " in done.stdout and "whole-photo PSNR: " in done.stdout


def test_social_judges_the_shared_copy_and_picture_shows_the_difference(photos: tuple[Path, Path], tmp_path: Path) -> None:
    original, cloaked = photos
    plain, social = verify(original, cloaked), verify(original, cloaked, "--social", "--picture", tmp_path / "compare.png")
    assert social.returncode == 0, social.stdout + social.stderr
    assert "after resize to 1080 px + JPEG q80" in social.stdout
    assert protected_column(social.stdout) == dict.fromkeys(JUDGES, "yes"), social.stdout
    # The re-encoded copy is what was measured, not the file itself.
    assert judge_rows(plain.stdout) != judge_rows(social.stdout)

    before, after = read_photo(original).rgb, read_photo(cloaked).rgb
    h, w = before.shape[:2]
    with Image.open(tmp_path / "compare.png") as im:
        picture = np.asarray(im.convert("RGB"))
    assert picture.shape == (h, 3 * w, 3)
    assert np.array_equal(picture[:, :w], before) and np.array_equal(picture[:, w : 2 * w], after)
    diff = picture[:, 2 * w :].astype(int)
    changed = (before != after).any(axis=2)
    assert changed.any() and (diff[~changed] == 128).all()
    assert np.array_equal(picture, np.asarray(difference_picture(before, after)))
    assert f"wrote {tmp_path / 'compare.png'}" in social.stdout


def test_a_photo_without_a_face_has_nothing_to_verify(tmp_path: Path) -> None:
    photo = tmp_path / "legs.jpg"
    photo.write_bytes(faceless_photo(gps=False))
    done = verify(photo, photo)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "legs.jpg: no face found; nothing to verify" in done.stdout


def test_bad_input_is_a_one_line_error(photos: tuple[Path, Path], tmp_path: Path) -> None:
    original, _ = photos
    other_size = tmp_path / "small.jpg"
    with Image.open(original) as im:
        im.resize((im.width // 2, im.height // 2)).save(other_size)
    not_a_photo = tmp_path / "notes.jpg"
    not_a_photo.write_text("not a photo")
    for args, expected in (
        ((original, other_size), "not a cloaked copy of it"),
        ((original, tmp_path / "missing.jpg"), "missing.jpg"),
        ((not_a_photo, original), "notes.jpg: not a readable image"),
    ):
        done = verify(*args)
        assert done.returncode == 1, done.stdout + done.stderr
        [line] = done.stderr.strip().splitlines()
        assert line.startswith("lowkeyd: error: ") and expected in line, line
        assert done.stdout == ""
