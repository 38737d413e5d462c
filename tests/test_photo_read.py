"""Every bad or unsuitable input gives one clear PhotoError line, and nothing is written."""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import photo_fixtures as fx
import pytest
from PIL import Image

from lowkeyd.errors import PhotoError
from lowkeyd.photo import is_photo_path, read_photo, write_photo

MARKER = {"version": "0.1.0", "preset": "balanced"}


def cloak_into(source: Path, out_dir: Path, **read_options) -> Path:
    """What `lowkeyd cloak` does with a file, the attack aside."""
    photo = read_photo(source, **read_options)
    return write_photo(photo, 255 - photo.rgb, out_dir / source.name, marker=MARKER)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header claims the given size: how a decompression bomb starts."""
    out = io.BytesIO()
    Image.new("L", (1, 1)).save(out, format="PNG")
    data = bytearray(out.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def obama_bytes() -> bytes:
    return (fx.DATA / "obama.jpg").read_bytes()


def save(image: Image.Image, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, **options)
    return out.getvalue()


def animated(fmt: str) -> bytes:
    frames = [fx.face(0.05).rotate(a) for a in (0, 10, 20)]
    return save(frames[0], format=fmt, save_all=True, append_images=frames[1:], duration=100)


def burst_heic() -> bytes:
    frames = [fx.face(0.1), fx.face(0.1).rotate(5)]
    return save(frames[0], format="HEIF", save_all=True, append_images=frames[1:], quality=60)


BAD_INPUTS: dict[str, tuple[str, Callable[[], bytes], str]] = {
    "zero-byte": ("empty.jpg", lambda: b"", "empty"),
    "truncated JPEG": ("cut.jpg", lambda: obama_bytes()[: len(obama_bytes()) // 2], "truncated or corrupt JPEG"),
    "truncated PNG": ("cut.png", lambda: (fx.DATA / "astronaut.png").read_bytes()[:60_000], "truncated or corrupt PNG"),
    "JPEG header only": ("head.jpg", lambda: obama_bytes()[:600], "not a readable image"),
    "not an image": ("notes.jpg", lambda: b"shopping list: milk, eggs\n" * 20, "not a readable image"),
    "a video": ("clip.jpg", lambda: fx.mp4_video([fx.face(0.1)] * 2), "not a readable image"),
    "PNG named .jpg": ("fake.jpg", lambda: (fx.DATA / "astronaut.png").read_bytes(), "a PNG image named .jpg"),
    "JPEG named .heic": ("fake.heic", obama_bytes, "a JPEG image named .heic"),
    "no extension": ("photo", obama_bytes, "without an extension"),
    "decompression bomb": ("bomb.png", lambda: png_claiming(50_000, 50_000), "decompression bomb"),
    "huge dimensions": ("huge.png", lambda: png_claiming(12_000, 11_000), "132.0 megapixels, over the limit of 120"),
    "static GIF": ("still.gif", lambda: save(fx.face(0.05), format="GIF"), "GIF"),
    "animated GIF": ("anim.gif", lambda: animated("GIF"), "GIF"),
    "animated WebP": ("anim.webp", lambda: animated("WEBP"), "WebP is animated (3 frames)"),
    "animated PNG": ("anim.png", lambda: animated("PNG"), "PNG is animated (3 frames)"),
    "HEIF burst": ("burst.heic", burst_heic, "holds 2 images"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_is_one_clear_line_and_nothing_is_written(tmp_path: Path, case: str) -> None:
    name, build, reason = BAD_INPUTS[case]
    source = tmp_path / "in" / name
    source.parent.mkdir()
    source.write_bytes(build())
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(PhotoError) as caught:
        cloak_into(source, out_dir)
    message = str(caught.value)
    assert reason in message and "\n" not in message and message.startswith(str(source))
    assert os.listdir(out_dir) == []


def test_pixel_limit_is_configurable(tmp_path: Path) -> None:
    with pytest.raises(PhotoError, match=r"1\.0 megapixels, over the limit of 0\.1 "):
        read_photo(fx.DATA / "obama.jpg", max_pixels=100_000)
    assert read_photo(png_claiming(1, 1), max_pixels=1).size == (1, 1)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (Path("/nonexistent/photo.jpg"), "cannot read"),
        (fx.DATA, "is a folder"),
        (b"", "<input>: empty"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "<input>: not a readable image"),
    ],
)
def test_unreadable_sources(source: Path | bytes, message: str) -> None:
    with pytest.raises(PhotoError, match=message):
        read_photo(source)


def test_bytes_input_needs_no_extension() -> None:
    photo = read_photo(obama_bytes())
    assert photo.source_path is None and photo.format == "JPEG" and photo.name == "<input>"


@pytest.mark.parametrize(
    ("mode", "grayscale", "has_alpha"),
    [("1", True, False), ("L", True, False), ("LA", True, True), ("RGBA", False, True), ("P", False, False)],
)
def test_colour_modes_are_read_as_8_bit_rgb(tmp_path: Path, mode: str, grayscale: bool, has_alpha: bool) -> None:
    image = fx.face(0.1).convert(mode)
    photo = read_photo(save(image, format="PNG"))
    assert photo.rgb.dtype == np.uint8 and photo.rgb.shape == (image.height, image.width, 3)
    assert photo.grayscale is grayscale and (photo.alpha is not None) is has_alpha


def test_palette_transparency_becomes_alpha() -> None:
    image = fx.face(0.1).quantize(16)
    photo = read_photo(save(image, format="PNG", transparency=0))
    assert photo.alpha is not None and set(np.unique(photo.alpha)) <= {0, 255} and 0 in photo.alpha


def test_an_already_cloaked_photo_is_recognised(tmp_path: Path) -> None:
    out = cloak_into(fx.rich_jpeg(tmp_path / "a.jpg"), tmp_path / "..")
    assert read_photo(out).cloak_marker == MARKER


def test_xml_bomb_in_xmp_is_dropped_not_expanded(tmp_path: Path) -> None:
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" dc:format="&b;"/>'
        b"</rdf:RDF></x:xmpmeta>"
    )
    photo = read_photo(save(fx.face(0.1), format="JPEG", xmp=bomb))
    assert photo.xmp is None and "the XMP packet (not well-formed)" in photo.dropped


def test_photo_paths_by_extension() -> None:
    for name in ("IMG_0001.JPG", "a.jpeg", "b.HEIC", "c.heif", "d.png", "e.webp", "f.avif"):
        assert is_photo_path(name), name
    not_photos = ("IMG_0001.MOV", "clip.mp4", "notes.txt", "._IMG_0001.JPG", ".a.jpg.ab12cd34.lowkeyd-tmp", "raw.dng")
    for name in not_photos:
        assert not is_photo_path(name), name
