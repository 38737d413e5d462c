"""lowkeyd's own output is known by its content hash, never by a tag; the tag is written only when asked.

A published photo says nothing of lowkeyd by default. A file is taken as lowkeyd's output (and not
cloaked twice) only when the caller (the daemon's state) knows its exact bytes, tag or no tag; a
file carrying the XMP marker is cloaked like any other otherwise, since anyone can write one. Even
a known output is published sanitised.
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
    from lowkeyd.engine.presets import get_preset
    from lowkeyd.pipeline import PhotoProtector
    from lowkeyd.settings import ProtectionSettings

    cloaker = Cloaker(get_preset(), None)
    return lambda is_own_output=None, **policies: PhotoProtector(
        cloaker, ProtectionSettings(**policies), is_own_output=is_own_output
    )


def test_an_untagged_output_is_known_by_its_hash_and_a_forged_marker_is_cloaked(tmp_path: Path, protector_factory) -> None:
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
    # the forged marker went with the rest: the output names lowkeyd nowhere
    assert read_photo(written).cloak_marker is None and b"lowkeyd" not in written

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


def test_mark_tags_the_output_and_a_known_output_keeps_or_loses_its_tag_as_asked(tmp_path: Path, protector_factory) -> None:
    source = fx.rich_jpeg(tmp_path / "IMG_0002.jpg")
    marked = protector_factory(mark=True).protect_file(source, tmp_path / "marked.jpg")
    marker = read_photo(tmp_path / "marked.jpg").cloak_marker
    assert marked.status == "cloaked" and marker is not None
    assert marker["preset"] == "default" and marker["faces"] == "1" and marker["models"]

    own = {marked.sha256}.__contains__
    protector_factory(is_own_output=own, mark=True).protect_file(tmp_path / "marked.jpg", tmp_path / "still.jpg")
    assert read_photo(tmp_path / "still.jpg").cloak_marker == marker
    unmarked = protector_factory(is_own_output=own).protect_file(tmp_path / "marked.jpg", tmp_path / "plain.jpg")
    assert unmarked.status == "already_cloaked"
    assert read_photo(tmp_path / "plain.jpg").cloak_marker is None and b"lowkeyd" not in (tmp_path / "plain.jpg").read_bytes()
