"""Formats beyond 8-bit RGB, and lossy formats at the source's size, on third-party files.

The files come from pillow-heif's and Pillow's own test images (tests/data/cameras/SOURCES.md).
A block of pixels is changed as a cloak would; outside it a lossless output keeps the source's
samples bit for bit, bit depth and colour model are kept, and a lossy output is about the
source's size.
"""

from __future__ import annotations

import io

import imagecodecs
import numpy as np
import photo_fixtures as fx
import pytest
from PIL import Image

from lowkeyd.photo import encode_photo, read_photo
from lowkeyd.photo import avif, jpegscans
from lowkeyd.photo.containers import jpeg_layout, png_chunks
from lowkeyd.photo.jpegscans import scan_mode

CAMERAS = fx.DATA / "cameras"
MARKER = {"version": "0.1.0", "preset": "default"}


def cloak_block(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(changed pixels, mask of the pixels well away from the change)."""
    out = rgb.copy()
    h, w = rgb.shape[:2]
    out[h // 4 : h // 2, w // 4 : w // 2] = 255 - out[h // 4 : h // 2, w // 4 : w // 2] // 2
    away = np.ones((h, w), bool)
    away[max(0, h // 4 - 16) : h // 2 + 16, max(0, w // 4 - 16) : w // 2 + 16] = False
    return out, away


@pytest.mark.parametrize("name", ["RGB_16__128x128.png", "RGBA_16__128x128.png", "L_16__128x128.png"])
def test_16bit_png_keeps_its_samples_outside_the_cloak(name: str) -> None:
    photo = read_photo(CAMERAS / name)
    assert photo.bit_depth == 16
    rgb, away = cloak_block(photo.rgb)
    out = read_photo(encode_photo(photo, rgb, marker=MARKER))
    assert out.bit_depth == 16 and out.samples is not None and photo.samples is not None
    assert out.samples.array.shape == photo.samples.array.shape
    assert np.array_equal(out.samples.array[away], photo.samples.array[away])
    assert np.array_equal(out.rgb, rgb)  # a changed pixel reads back as cloaked, grayscale too
    assert (out.exif is not None) == (photo.exif is not None)
    assert out.cloak_marker == MARKER


@pytest.mark.parametrize("name", ["RGB_10__128x128.heif", "RGBA_12__29x100.heif"])
def test_deep_heif_is_written_at_its_bit_depth(name: str) -> None:
    photo = read_photo(CAMERAS / name)
    assert photo.bit_depth in (10, 12)
    rgb, away = cloak_block(photo.rgb)
    out = read_photo(encode_photo(photo, rgb, marker=MARKER))
    assert out.bit_depth == photo.bit_depth
    assert np.abs(out.rgb.astype(int) - rgb)[away].mean() < 1.0  # lossy, but close to the source
    assert (out.alpha is None) == (photo.alpha is None)


def test_cmyk_jpeg_is_rewritten_block_by_block_with_its_black_kept() -> None:
    photo = read_photo(CAMERAS / "pil_sample_cmyk.jpg")
    assert photo.samples is not None and photo.samples.cmyk
    h, w = photo.rgb.shape[:2]
    # A cloak-sized change (a few levels), not an inversion: the black ink stays as it was.
    noise = np.random.default_rng(0).integers(-8, 9, (h // 4, w // 4, 3))
    rgb = photo.rgb.copy()
    rgb[h // 4 : h // 2, w // 4 : w // 2] = np.clip(rgb[h // 4 : h // 2, w // 4 : w // 2] + noise, 0, 255)
    away = np.ones((h, w), bool)
    away[h // 4 - 8 : h // 2 + 8, w // 4 - 8 : w // 2 + 8] = False
    data = encode_photo(photo, rgb, marker=MARKER)
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "CMYK"
    out = read_photo(data)
    assert out.samples is not None
    assert np.array_equal(out.samples.array[away], photo.samples.array[away])  # block-exact
    assert np.array_equal(out.samples.array[..., 3], photo.samples.array[..., 3])  # K untouched
    changed = ~away
    assert np.abs(out.rgb.astype(int) - rgb)[changed].mean() < 1.0  # re-quantised at the source's own tables
    assert out.exif is not None and out.cloak_marker == MARKER
    assert 0.7 < len(data) / len(photo.source_bytes) < 1.15


def test_cmyk_jpeg_without_a_face_keeps_its_image_data() -> None:
    photo = read_photo(CAMERAS / "pil_sample_cmyk.jpg")
    data = encode_photo(photo, photo.rgb, marker=MARKER)
    out = read_photo(data)
    assert out.samples is not None and np.array_equal(out.samples.array, photo.samples.array)


@pytest.mark.parametrize("name", ["flower.webp", "exif.avif", "icc_profile.avif"])
def test_lossy_output_is_about_the_source_size(name: str) -> None:
    photo = read_photo(CAMERAS / name)
    rgb, _ = cloak_block(photo.rgb)
    data = encode_photo(photo, rgb, marker=MARKER)
    assert 0.85 <= len(data) / len(photo.source_bytes) <= 1.15
    out = read_photo(data)
    assert out.icc_profile == photo.icc_profile
    assert out.cloak_marker == MARKER


def test_phone_heic_drops_its_depth_and_gain_maps_and_says_so() -> None:
    photo = read_photo(CAMERAS / "pug.heic")
    assert any("depth maps" in note and "gain maps" in note for note in photo.dropped)


@pytest.mark.slow
def test_phone_heic_is_written_at_its_size_with_its_metadata() -> None:
    photo = read_photo(CAMERAS / "pug.heic")
    rgb, _ = cloak_block(photo.rgb)
    data = encode_photo(photo, rgb, marker=MARKER)
    # The source also holds a depth map, a gain map and a thumbnail the output leaves out.
    assert 0.85 * 0.85 <= len(data) / len(photo.source_bytes) <= 1.15
    out = read_photo(data)
    assert out.icc_profile == photo.icc_profile and out.exif is not None and out.xmp is not None
    assert out.encoding.chroma == photo.encoding.chroma


@pytest.mark.skipif(not jpegscans.available(), reason="jpegtran is not installed (apt-get install libjpeg-turbo-progs)")
@pytest.mark.parametrize("name", ["progressive_photoshop.jpg", "restart_interval.jpg", "pil_sample_cmyk.jpg"])
def test_cloaked_jpeg_keeps_its_scan_mode_and_restart_interval(name: str) -> None:
    photo = read_photo(CAMERAS / name)
    source = scan_mode(photo.source_bytes)
    assert source.progressive or source.restart  # what the file is here to test
    rgb, away = cloak_block(photo.rgb)
    data = encode_photo(photo, rgb, marker=MARKER)
    assert scan_mode(data) == source  # the same scans (Photoshop's own progressive script) and DRI
    out = read_photo(data)
    assert np.array_equal(out.rgb[away], photo.rgb[away])
    assert not any("jpegtran" in note for note in photo.dropped)


def test_444_avif_keeps_its_chroma_and_its_colour_edges() -> None:
    photo = read_photo(CAMERAS / "icc_profile.avif")
    assert photo.encoding.avif is not None and photo.encoding.avif.subsampling == "4:4:4"
    rgb, away = cloak_block(photo.rgb)
    data = encode_photo(photo, rgb, marker=MARKER)
    assert avif.coding(data).subsampling == "4:4:4"
    # Written 4:2:0 (Pillow's default) the saturated red edges of this file moved by up to 59 levels.
    assert np.abs(read_photo(data).rgb.astype(int) - rgb)[away].max() <= 8


def test_10bit_avif_is_written_at_its_bit_depth() -> None:
    # No registry package at hand ships a 10-bit AVIF: libavif (through imagecodecs) codes a real photo at 10 bits.
    with Image.open(fx.DATA / "obama.jpg") as im:
        picture = np.asarray(im.convert("RGB").resize((320, 400)))
    source = bytes(imagecodecs.avif_encode((picture.astype(np.uint16) * 1023 + 127) // 255, 70, bitspersample=10))
    photo = read_photo(source)
    assert photo.bit_depth == 10 and not photo.dropped
    rgb, away = cloak_block(photo.rgb)
    data = encode_photo(photo, rgb, marker=MARKER)
    assert avif.coding(data).bits == 10
    out = read_photo(data)
    assert out.bit_depth == 10 and out.cloak_marker == MARKER
    assert np.abs(out.rgb.astype(int) - rgb)[away].mean() < 2.5
    assert 0.85 <= len(data) / len(source) <= 1.25  # the marker's XMP (about 1 KB) is added to 23 KB


def test_png_keeps_its_physical_pixel_size() -> None:
    photo = read_photo(CAMERAS / "RGB_16__128x128.png")
    rgb, _ = cloak_block(photo.rgb)
    data = encode_photo(photo, rgb, marker=MARKER)
    assert _chunk(data, b"pHYs") == _chunk(photo.source_bytes, b"pHYs") is not None  # Pillow alone drops it


def test_re_encoded_jpeg_keeps_its_adobe_segment() -> None:
    photo = read_photo(CAMERAS / "restart_interval.jpg")  # YCbCr with Adobe's APP14 (transform 1)
    rgb, _ = cloak_block(photo.rgb)
    data = encode_photo(photo, rgb, marker=MARKER)
    adobe = [p for m, p in jpeg_layout(data).segments if m == 0xEE]
    assert adobe == [p for m, p in jpeg_layout(photo.source_bytes).segments if m == 0xEE] != []


def _chunk(data: bytes, kind: bytes) -> bytes | None:
    return next((payload for found, payload in png_chunks(data) if found == kind), None)


@pytest.mark.parametrize("name", ["exif.avif", "xmp_tags_orientation.avif"])
def test_avif_is_shown_as_its_source_was(name: str) -> None:
    # exif.avif has an EXIF Orientation tag, xmp_tags_orientation.avif an XMP tiff:Orientation of 3.
    photo = read_photo(CAMERAS / name)
    data = encode_photo(photo, photo.rgb, marker=MARKER)
    assert fx.mean_diff(fx.displayed(data), fx.displayed(CAMERAS / name)) < 4  # lossy, but not turned
    if photo.exif is not None:
        with Image.open(io.BytesIO(data)) as image:
            assert image.getexif().get(0x0112) is None  # left out rather than Pillow's rewrite of the EXIF
        assert any("Orientation" in note for note in photo.dropped)


def test_without_jpegtran_a_progressive_copy_is_baseline_and_said(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")  # a machine without libjpeg-turbo's tools
    photo = read_photo(CAMERAS / "progressive_photoshop.jpg")
    assert any("progressive scans" in note and "jpegtran" in note for note in photo.dropped)
    rgb, away = cloak_block(photo.rgb)
    data = encode_photo(photo, rgb, marker=MARKER)
    assert scan_mode(data).plain
    assert np.array_equal(read_photo(data).rgb[away], photo.rgb[away])
