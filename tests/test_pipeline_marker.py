"""The lowkeyd marker is no pass: a file is taken as lowkeyd's output only by its content hash.

Anyone can write the XMP marker into a photo; a file carrying it must still be cloaked
unless the caller (the daemon's state) knows its exact bytes as lowkeyd's own output, and
even then it is published sanitised.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import photo_fixtures as fx
import pytest

from lowkeyd.photo import read_photo, write_photo
from lowkeyd.photo.jpeg import image_data

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def protector_factory():
    from lowkeyd.engine.cloak import Cloaker
    from lowkeyd.pipeline import PhotoProtector

    cloaker = Cloaker("default", None)
    return lambda **kw: PhotoProtector(cloaker, **kw)


def test_a_forged_marker_is_cloaked_and_a_known_output_is_sanitised(tmp_path: Path, protector_factory) -> None:
    forged = tmp_path / "forged.jpg"
    source = read_photo(fx.rich_jpeg(tmp_path / "IMG_0001.jpg"))
    # the original face and GPS, marked as if lowkeyd had written it
    write_photo(source, source.rgb, forged, strip_gps=False, marker={"version": "0.1.0", "preset": "default"})
    assert read_photo(forged).cloak_marker is not None and read_photo(forged).has_location

    outcome = protector_factory().protect_file(forged, tmp_path / "out.jpg")
    assert outcome.status == "cloaked" and outcome.faces_cloaked == 1
    assert "the GPS position and location fields" in outcome.dropped and "removed:" in outcome.message
    written = (tmp_path / "out.jpg").read_bytes()
    assert outcome.sha256 == hashlib.sha256(written).hexdigest()

    known = {outcome.sha256}
    again = protector_factory(is_own_output=known.__contains__).protect_file(tmp_path / "out.jpg", tmp_path / "again.jpg")
    assert again.status == "already_cloaked"
    assert image_data((tmp_path / "again.jpg").read_bytes()) == image_data(written)  # pixels not touched twice
    # a known output written with GPS kept still loses it when published with strip_gps
    kept = protector_factory(strip_gps=False).protect_file(forged, tmp_path / "kept.jpg")
    assert read_photo(tmp_path / "kept.jpg").has_location
    sanitised = protector_factory(is_own_output={kept.sha256}.__contains__).protect_file(
        tmp_path / "kept.jpg", tmp_path / "sanitised.jpg"
    )
    assert sanitised.status == "already_cloaked" and not read_photo(tmp_path / "sanitised.jpg").has_location
