"""`lowkeyd cloak` end to end on the issue's test photo: the real attack, then every photo-layer promise."""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import piexif
import pytest
from PIL import Image

import photo_fixtures as fx
from lowkeyd.photo import read_photo
from lowkeyd.photo.xmp import MARKER_NS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("lowkeyd.cli.cloak") is None,
        reason="`lowkeyd cloak` does not exist yet (no lowkeyd.cli.cloak); this test runs once it does",
    ),
]


@pytest.mark.parametrize("keep_gps", [False, True], ids=["strip-gps", "keep-gps-and-mark"])
def test_lowkeyd_cloak_keeps_the_photo_and_loses_the_face(tmp_path: Path, keep_gps: bool) -> None:
    source = tmp_path / "in" / "IMG_0001.jpg"
    source.parent.mkdir()
    fx.rich_jpeg(source)
    out_dir = tmp_path / "out"
    # --no-daemon: this test is about the photo layer in this process, not whatever daemon runs here
    command = [sys.executable, "-m", "lowkeyd", "cloak", "--no-daemon", str(source), "-o", str(out_dir)]
    result = subprocess.run(command + (["--keep-gps", "--mark"] if keep_gps else []), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    dest = out_dir / source.name
    assert sorted(p.name for p in out_dir.iterdir()) == [source.name]

    source_exif, out_exif = piexif.load(str(source)), piexif.load(str(dest))
    fx.assert_camera_tags_kept(source_exif, out_exif)
    assert out_exif["GPS"] == (fx.GPS if keep_gps else {})

    # the thumbnail is made from the cloaked pixels, not carried over from the original
    thumb = np.asarray(Image.open(io.BytesIO(out_exif["thumbnail"])).convert("RGB"))
    assert out_exif["thumbnail"] != source_exif["thumbnail"]
    with Image.open(dest) as stored:
        expected = stored.convert("RGB")
        assert stored.info["icc_profile"] == Image.open(source).info["icc_profile"]
    expected.thumbnail((thumb.shape[1], thumb.shape[0]))
    assert fx.mean_diff(thumb, expected) < 6

    facts = fx.xmp_facts(fx.xmp_of(dest))
    kept = {f for f in fx.xmp_facts(fx.xmp_of(source)) if not fx.removed_from_xmp(f, strip_gps=not keep_gps)}
    assert {f for f in facts if MARKER_NS not in f[0]} == kept
    # lowkeyd's tag only with --mark
    marker = read_photo(dest).cloak_marker
    assert (marker is not None and {"version", "preset", "faces", "models"} <= marker.keys()) if keep_gps else marker is None
    assert (b"lowkeyd" in dest.read_bytes()) == keep_gps

    # displays upright like the source, changed only by the cloak
    shown, original = fx.displayed(dest), fx.displayed(source)
    assert shown.shape == original.shape  # rotated once: twice or never would turn it sideways
    assert 0 < fx.mean_diff(shown, original) < 8

    assert dest.stat().st_mtime_ns == source.stat().st_mtime_ns
