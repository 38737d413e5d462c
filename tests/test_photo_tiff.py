"""TIFF on third-party files (ExifTool's and Pillow's test images, tests/data/cameras/SOURCES.md).

A cloak changes a block of pixels; the output is the source file with only the strips or
tiles holding that block compressed again: every other sample is bit for bit the source's,
compression, predictor, bit depth, ICC profile and resolution stay, and the metadata differs
only by what lowkeyd announces.
"""

from __future__ import annotations

import io
from pathlib import Path

import exiv2
import numpy as np
import photo_fixtures as fx
import pytest
import tifffile
from test_photo_cameras import exiftool_tags, exiv2_complaints, metadata_diff, needs_exiftool, warnings

from lowkeyd.errors import PhotoError
from lowkeyd.photo import encode_photo, read_photo
from lowkeyd.photo.complete import looks_complete

CAMERAS = fx.DATA / "cameras"
TIFFS = ["ExifTool.tif", "photoshop_deflate.tif", "hopper_lzw.tif", "RGB_16_tiled_deflate.tiff", "L_16_deflate.tif"]
MARKER = {"version": "0.1.0", "preset": "default"}
# Where the strips or tiles lie changes with the file; what they hold is compared as samples.
_LAYOUT = {"StripOffsets", "StripByteCounts", "TileOffsets", "TileByteCounts"}


def cloak(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(changed pixels, mask of the pixels left alone)."""
    out = rgb.copy()
    h, w = rgb.shape[:2]
    out[h // 4 : h // 2, w // 4 : w // 2] = 255 - out[h // 4 : h // 2, w // 4 : w // 2]
    away = np.ones((h, w), bool)
    away[h // 4 : h // 2, w // 4 : w // 2] = False
    return out, away


def page_facts(data: bytes) -> tuple[np.ndarray, dict[str, object]]:
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages.first
        kept = ("ImageWidth", "ImageLength", "BitsPerSample", "Compression", "Predictor", "PhotometricInterpretation",
                "XResolution", "YResolution", "ResolutionUnit", "InterColorProfile", "RowsPerStrip", "TileWidth")
        tags = {name: page.tags[name].value for name in kept if name in page.tags}
        return page.asarray(), tags


@pytest.mark.parametrize("name", TIFFS)
def test_tiff_keeps_every_sample_outside_the_cloak_and_its_coding(name: str) -> None:
    photo = read_photo(CAMERAS / name)
    rgb, away = cloak(photo.rgb)
    data = encode_photo(photo, rgb, marker=MARKER)
    before, source_tags = page_facts(photo.source_bytes)
    after, output_tags = page_facts(data)
    assert output_tags == source_tags  # compression, predictor, depth, ICC, resolution
    assert after.dtype == before.dtype and after.shape == before.shape
    assert np.array_equal(after[away], before[away])
    out = read_photo(data)
    assert out.bit_depth == photo.bit_depth
    if not photo.grayscale:
        assert np.array_equal(out.rgb, rgb)  # a changed pixel reads back as cloaked
    assert out.cloak_marker == MARKER
    assert 0.9 < len(data) / len(photo.source_bytes) < 1.15 or any("layers" in note for note in photo.dropped)


@pytest.mark.parametrize("name", TIFFS)
def test_tiff_without_a_face_keeps_its_image_data(name: str) -> None:
    photo = read_photo(CAMERAS / name)
    data = encode_photo(photo, photo.rgb, marker=MARKER)
    with tifffile.TiffFile(io.BytesIO(photo.source_bytes)) as a, tifffile.TiffFile(io.BytesIO(data)) as b:
        source, output = a.pages.first, b.pages.first
        chunks = [photo.source_bytes[o : o + n] for o, n in zip(source.dataoffsets, source.databytecounts, strict=True)]
        written = [data[o : o + n] for o, n in zip(output.dataoffsets, output.databytecounts, strict=True)]
    assert written == chunks


@needs_exiftool
@pytest.mark.parametrize("name", TIFFS)
def test_tiff_metadata_survives_but_what_leaks(tmp_path: Path, name: str) -> None:
    photo = read_photo(CAMERAS / name)
    output = tmp_path / name
    output.write_bytes(encode_photo(photo, cloak(photo.rgb)[0], marker=MARKER))
    removed, changed, added = metadata_diff(CAMERAS / name, output)
    layers = any("layers" in note for note in photo.dropped)
    removed = {k for k in removed if not (layers and k.startswith("Photoshop:Layer"))}
    changed = {k for k in changed if k.partition(":")[2] not in _LAYOUT}
    assert removed == set() and changed == set() and added == set()
    assert warnings(output) <= warnings(CAMERAS / name)
    assert exiv2_complaints(output) <= exiv2_complaints(CAMERAS / name)


@needs_exiftool
def test_tiff_iptc_loses_only_its_places(tmp_path: Path) -> None:
    photo = read_photo(CAMERAS / "ExifTool.tif")
    assert photo.has_location  # IPTC City, Province-State, Country
    output = tmp_path / "out.tif"
    output.write_bytes(encode_photo(photo, photo.rgb, marker=MARKER))
    tags = exiftool_tags(output)
    assert "IPTC:City" not in tags and "IPTC:Province-State" not in tags
    assert tags["IPTC:Caption-Abstract"] == "The picture caption" and tags["IPTC:By-line"] == "I'm the author"
    output.write_bytes(encode_photo(photo, photo.rgb, marker=MARKER, strip_gps=False))
    assert exiftool_tags(output)["IPTC:City"] == "Kingston"


def test_photoshop_layers_are_dropped_and_said() -> None:
    photo = read_photo(CAMERAS / "photoshop_deflate.tif")
    assert any("ImageSourceData" in note for note in photo.dropped)
    assert any("Photoshop thumbnail" in note for note in photo.dropped)
    out = encode_photo(photo, photo.rgb, marker=MARKER)
    with tifffile.TiffFile(io.BytesIO(out)) as tif:
        assert 37724 not in tif.pages.first.tags  # ImageSourceData: the layers, original pixels included
    assert not read_photo(out).dropped


def test_multipage_tiff_is_refused_in_one_line() -> None:
    with pytest.raises(PhotoError, match=r"holds 3 pages; lowkeyd cloaks single-page TIFFs$"):
        read_photo(CAMERAS / "multipage.tiff")


@pytest.mark.parametrize("name", TIFFS)
def test_a_tiff_still_being_written_is_not_complete(name: str) -> None:
    data = (CAMERAS / name).read_bytes()
    assert looks_complete(data)
    assert not any(looks_complete(data[:cut]) for cut in (100, len(data) // 2, len(data) - 10))


def test_tiff_gps_goes_unless_kept() -> None:
    # ExifTool.tif with a GPS position added by libexiv2, as a geotagging tool would.
    image = exiv2.ImageFactory.open((CAMERAS / "ExifTool.tif").read_bytes())
    image.readMetadata()
    gps = image.exifData()
    gps["Exif.GPSInfo.GPSLatitudeRef"] = "N"
    gps["Exif.GPSInfo.GPSLatitude"] = "38/1 53/1 2316/100"
    image.writeMetadata()
    photo = read_photo(bytes(image.io().mmap()))
    assert photo.has_location
    stripped = encode_photo(photo, photo.rgb, marker=MARKER)
    kept = encode_photo(photo, photo.rgb, marker=MARKER, strip_gps=False)
    assert not read_photo(stripped).has_location and _gps_keys(stripped) == set()
    assert _gps_keys(kept) == {"Exif.GPSInfo.GPSLatitudeRef", "Exif.GPSInfo.GPSLatitude"}


def _gps_keys(data: bytes) -> set[str]:
    image = exiv2.ImageFactory.open(data)
    image.readMetadata()
    return {datum.key() for datum in image.exifData() if datum.groupName() == "GPSInfo"}
