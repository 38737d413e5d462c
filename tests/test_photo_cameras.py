"""Real camera files (ExifTool's test images): the output's metadata is the source's minus what leaks.

Each file is written twice, with its pixels unchanged (a photo without a face) and with a
block of them changed (a cloak); ``exiftool -a -G1`` of source and output may differ only
by the removals lowkeyd announces, and neither exiftool's nor exiv2's validation may find
anything the source did not already have.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import photo_fixtures as fx
import piexif
import pytest
from PIL import Image

from lowkeyd.photo import Photo, encode_photo, read_photo
from lowkeyd.photo.jpeg import image_data

CAMERAS = sorted((fx.DATA / "cameras").glob("*.jpg"))
# Every camera file lowkeyd takes, all formats (multipage.tiff is refused: lowkeyd cloaks single-page TIFFs).
CAMERA_FILES = sorted(p for p in (fx.DATA / "cameras").iterdir() if p.suffix != ".md" and p.name != "multipage.tiff")
MARKER = {"version": "0.1.0", "preset": "default"}

needs_exiftool = pytest.mark.skipif(
    shutil.which("exiftool") is None or shutil.which("exiv2") is None,
    reason="exiftool and exiv2 are not installed (apt-get install libimage-exiftool-perl exiv2)",
)

# Tags whose values follow the file rather than the photo.
# Adobe APP14 describes how the scans code colour: a re-encoded CMYK picture brings its own.
_FILE_FACTS = {"System", "File", "ExifTool", "Composite", "Adobe"}
# Removals lowkeyd announces: group -> tag names (None: the whole group).
_REMOVABLE: dict[str, set[str] | None] = {
    "GPS": None,
    "XMP-exif": {"GPSLatitude", "GPSLongitude", "GPSAltitude", "GPSAltitudeRef", "GPSMapDatum", "GPSVersionID",
                 "GPSTimeStamp", "GPSDateStamp"},
    "XMP-mwg-rs": None,
    "XMP-MP": None,
    "IPTC": {"City", "Sub-location", "Province-State", "Country-PrimaryLocationCode", "Country-PrimaryLocationName",
             "ContentLocationCode", "ContentLocationName"},
    "XMP-photoshop": {"City", "State", "Country"},
    "XMP-iptcCore": {"Location", "CountryCode"},
    "IFD1": {"ThumbnailOffset", "ThumbnailLength", "ThumbnailImage"},  # rebuilt from the output
    "Photoshop": {"PhotoshopThumbnail", "ThumbnailImage"},
    "Pentax": {"PreviewImageStart"},  # the MakerNote preview, blanked and relocated
    "XMP-iptcExt": {"PersonInImage", "LocationCreated", "LocationShown"},
}
# Additions: lowkeyd's marker, and a packet header where the source had no XMP.
_ADDED_GROUPS = {"XMP-lowkeyd", "XMP-x"}


def exiftool_tags(path: Path) -> dict[str, object]:
    out = subprocess.run(["exiftool", "-j", "-a", "-G1", "-struct", str(path)], capture_output=True, text=True, check=True)
    facts = json.loads(out.stdout)[0]
    return {k: v for k, v in facts.items() if k != "SourceFile" and k.split(":")[0] not in _FILE_FACTS}


def warnings(path: Path) -> set[str]:
    out = subprocess.run(["exiftool", "-validate", "-warning", "-a", "-s3", str(path)], capture_output=True, text=True, check=True)
    return {line for line in out.stdout.splitlines() if not line[:1].isdigit() and line != "OK"}


def maker_note(path: Path) -> bytes:
    """The MakerNote as stored (empty where there is none)."""
    return subprocess.run(["exiftool", "-b", "-MakerNotes", str(path)], capture_output=True, check=True).stdout


def thumbnail(path: Path) -> bytes:
    """The EXIF thumbnail as stored (empty where there is none)."""
    return subprocess.run(["exiftool", "-b", "-ThumbnailImage", str(path)], capture_output=True, check=True).stdout


def exiv2_complaints(path: Path) -> set[str]:
    out = subprocess.run(["exiv2", "-pa", str(path)], capture_output=True, text=True, errors="replace", check=False)  # 253: warnings
    return {line.split(":", 1)[-1].strip() for line in out.stderr.splitlines()}


def removable(key: str) -> bool:
    group, _, tag = key.partition(":")
    if group in _REMOVABLE:
        tags = _REMOVABLE[group]
        return tags is None or tag in tags
    return False


def metadata_diff(source: Path, output: Path) -> tuple[set[str], set[str], set[str]]:
    """(removed, changed, added) tag keys, the announced removals and rebuilt thumbnail left out."""
    before, after = exiftool_tags(source), exiftool_tags(output)
    removed = {k for k in before.keys() - after.keys() if not removable(k)}
    changed = {k for k in before.keys() & after.keys() if before[k] != after[k] and not removable(k)}
    added = {k for k in after.keys() - before.keys() if k.split(":")[0] not in _ADDED_GROUPS}
    return removed, changed, added


def cloak(rgb: np.ndarray) -> np.ndarray:
    out = rgb.copy()
    h, w = out.shape[:2]
    out[: max(1, h // 2), : max(1, w // 2)] = 255 - out[: max(1, h // 2), : max(1, w // 2)]
    return out


def written(tmp_path: Path, camera: Path, changed: bool, **options: Any) -> tuple[Photo, Path]:
    """The camera file read, and written (cloaked or with its pixels unchanged) into ``tmp_path``."""
    photo = read_photo(camera)
    output = tmp_path / camera.name
    output.write_bytes(encode_photo(photo, cloak(photo.rgb) if changed else photo.rgb, **options))
    return photo, output


@needs_exiftool
@pytest.mark.parametrize("camera", CAMERAS, ids=lambda p: p.stem)
@pytest.mark.parametrize("changed", [False, True], ids=["no-face", "cloaked"])
def test_camera_metadata_survives_but_what_leaks(tmp_path: Path, camera: Path, changed: bool) -> None:
    photo, output = written(tmp_path, camera, changed, marker=MARKER)
    removed, changed_tags, added = metadata_diff(camera, output)
    # JFIF density, IPTC (if not in a trailer), MakerNotes with their offsets: all as they were
    trailer_iptc = {k for k in removed if k.startswith(("FotoStation", "IPTC2"))}
    # A tag libexiv2 cannot write into a JPEG (an image-structure tag such as IFD0's
    # PhotometricInterpretation) may go, but only where the read said so.
    unwritable = {k for k in removed if any(k.partition(":")[2] in d and "libexiv2" in d for d in photo.dropped)}
    assert removed - trailer_iptc - unwritable == set() and changed_tags == set() and added == set()
    if trailer_iptc:
        assert any("after the end of the image" in d for d in photo.dropped)
    assert warnings(output) <= warnings(camera)
    assert exiv2_complaints(output) <= exiv2_complaints(camera)
    if not changed:
        assert image_data(output.read_bytes()) == image_data(camera.read_bytes())
    assert read_photo(output).cloak_marker == MARKER


@needs_exiftool
def test_gps_and_place_names_are_gone_and_reported(tmp_path: Path) -> None:
    gps, mwg = read_photo(fx.DATA / "cameras" / "GPS.jpg"), read_photo(fx.DATA / "cameras" / "MWG.jpg")
    assert gps.has_location and "the GPS position and location fields" in gps.drops(strip_gps=True)
    assert "the GPS position and location fields" not in gps.drops(strip_gps=False)
    output = tmp_path / "MWG.jpg"
    output.write_bytes(encode_photo(mwg, mwg.rgb, marker=MARKER))
    tags = exiftool_tags(output)
    assert "XMP-photoshop:City" not in tags and "IPTC:City" not in tags and "IPTC:Province-State" not in tags
    assert tags["XMP-dc:Rights"] == "RIGHT-XMP-Copyright" and tags["IPTC:CopyrightNotice"] == "WRONG-IPTC-Copyright"
    kept = read_photo(encode_photo(gps, gps.rgb, marker=MARKER, strip_gps=False))
    assert kept.has_location
    assert not read_photo(encode_photo(gps, gps.rgb, marker=MARKER)).has_location


def test_maker_note_previews_are_blanked_and_reported(tmp_path: Path) -> None:
    for name in ("NikonD70.jpg", "Pentax.jpg"):
        photo = read_photo(fx.DATA / "cameras" / name)
        assert any("preview image(s) inside the EXIF MakerNote" in d for d in photo.dropped)
        again = read_photo(encode_photo(photo, photo.rgb, marker=MARKER))
        assert not any("preview" in d for d in again.dropped)


def test_big_endian_exif_stays_big_endian() -> None:
    source = fx.DATA / "cameras" / "Apple.jpg"
    photo = read_photo(source)
    out = encode_photo(photo, cloak(photo.rgb), marker=MARKER)
    with Image.open(source) as im:
        assert im.info["exif"][6:8] == b"MM"
    exif = Image.open(io.BytesIO(out)).info["exif"]
    assert exif[6:8] == b"MM"


@needs_exiftool
@pytest.mark.parametrize("camera", CAMERA_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("changed", [False, True], ids=["no-face", "cloaked"])
def test_a_published_copy_names_no_lowkeyd_and_keeps_its_maker_note(tmp_path: Path, camera: Path, changed: bool) -> None:
    _, output = written(tmp_path, camera, changed)
    assert b"lowkeyd" not in output.read_bytes() and read_photo(output).cloak_marker is None
    had_xmp = any(k.startswith("XMP") for k in exiftool_tags(camera))
    assert any(k.startswith("XMP") for k in exiftool_tags(output)) == had_xmp, "an XMP packet appeared or went"
    # byte for byte: a MakerNote whose offsets count from the TIFF header (Canon's, in flower.webp) stays put
    assert maker_note(output) == maker_note(camera)
    assert warnings(output) <= warnings(camera)


@needs_exiftool
@pytest.mark.parametrize("name", ["flower.webp", "restart_interval.jpg"])
def test_unchanged_pixels_keep_the_cameras_thumbnail(tmp_path: Path, name: str) -> None:
    photo = read_photo(fx.DATA / "cameras" / name)
    own = thumbnail(fx.DATA / "cameras" / name)
    assert own.startswith(b"\xff\xd8")  # a real picture, not ExifTool's "<Dummy thumbnail>"
    kept, cloaked = tmp_path / "kept" / name, tmp_path / "cloaked" / name
    for path, rgb in ((kept, photo.rgb), (cloaked, cloak(photo.rgb))):
        path.parent.mkdir()
        path.write_bytes(encode_photo(photo, rgb))
    assert thumbnail(kept) == own
    # changed pixels: a thumbnail of them, in the old one's place
    new = Image.open(io.BytesIO(thumbnail(cloaked))).convert("RGB")
    assert new.size == Image.open(io.BytesIO(own)).size
    shown = Image.open(cloaked).convert("RGB").resize(new.size, Image.Resampling.BOX)
    assert fx.mean_diff(np.asarray(new), np.asarray(shown)) < 8


def test_a_stale_thumbnail_is_rebuilt_even_with_unchanged_pixels() -> None:
    """A thumbnail an editor left behind can show what was cropped away: it goes, pixels changed or not."""
    with Image.open(fx.DATA / "noface" / "coffee.jpg") as im:
        scene = im.convert("RGB")
    cropped_away = scene.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    source = fx.jpeg_bytes(scene, quality=92, exif=fx.exif_with(gps=False, thumbnail_of=cropped_away))
    photo = read_photo(source)
    out = encode_photo(photo, photo.rgb)
    old_thumb = piexif.load(source)["thumbnail"]
    new_thumb = piexif.load(out)["thumbnail"]
    assert new_thumb and new_thumb != old_thumb
    small = np.asarray(Image.open(io.BytesIO(new_thumb)).convert("RGB"))
    expected = scene.resize((small.shape[1], small.shape[0]), Image.Resampling.BOX)
    assert fx.mean_diff(small, np.asarray(expected)) < 8
    assert image_data(out) == image_data(source)
