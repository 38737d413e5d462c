"""Fuzzing the loader: random bytes and mutated real photos give a Photo or a PhotoError, nothing else.

Whatever it reads must also encode, or fail with a PhotoError: metadata that survived a
damaged file must not crash the writer.

A case a run finds is kept as an ``@example`` below (the failure prints it, ``print_blob``),
so it is tried on every run and every machine, not only where Hypothesis' local database
still has it.
"""

from __future__ import annotations

import io

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

import photo_fixtures as fx
from lowkeyd.errors import PhotoError
from lowkeyd.photo import encode_photo, read_photo

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)
# Small, so that a mutated header cannot make one example decode for long.
MAX_PIXELS = 1_000_000


def _seeds() -> dict[str, bytes]:
    still = fx.face(0.06)
    exif = fx.exif_with(thumbnail_of=still)
    _, icc, xmp = fx.source_metadata()
    xmp = xmp.decode("utf-8").replace("</rdf:RDF>", fx.PEOPLE_XMP + "</rdf:RDF>").encode("utf-8")
    rgba = still.copy()
    rgba.putalpha(128)
    seeds = {}
    for name, image, options in [
        ("jpeg", still, {"format": "JPEG", "exif": exif, "icc_profile": icc, "xmp": xmp}),
        ("progressive", still, {"format": "JPEG", "progressive": True, "exif": exif}),
        ("mpo", still, {"format": "MPO", "save_all": True, "append_images": [still.convert("L").convert("RGB")]}),
        ("png", rgba, {"format": "PNG", "exif": exif, "icc_profile": icc}),
        ("webp", rgba, {"format": "WEBP", "lossless": True, "exif": exif, "xmp": xmp}),
        ("heic", still, {"format": "HEIF", "quality": 50, "exif": exif, "xmp": xmp}),
        ("avif", still, {"format": "AVIF", "quality": 50, "exif": exif, "xmp": xmp}),
    ]:
        out = io.BytesIO()
        image.save(out, **options)
        seeds[name] = out.getvalue()
    seeds["tiff"] = (fx.DATA / "cameras" / "ExifTool.tif").read_bytes()  # LZW, ICC, IPTC
    return seeds


SEEDS = _seeds()


def _scan_naming_a_missing_component() -> bytes:
    """Found by test_mutated_photos: a scan header naming a component its frame lacks (a bare ValueError once)."""
    data = bytearray(SEEDS["jpeg"])
    sos = data.rindex(b"\xff\xda")  # the image's one scan (the EXIF thumbnail's comes before it)
    data[sos + 5] = 9  # the first scan component's selector; the frame's components are 1, 2, 3
    return bytes(data)


def read_then_write(data: bytes) -> None:
    try:
        photo = read_photo(data, max_pixels=MAX_PIXELS)
    except PhotoError:
        return
    try:
        encode_photo(photo, photo.rgb, marker={"version": "fuzz"})
    except PhotoError:
        pass


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["set", "insert", "delete"]))
        if action == "set":
            data[at] = draw(st.integers(0, 255))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[at : at + draw(st.integers(1, 64))]
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@FUZZ
@given(mutated())
@example(_scan_naming_a_missing_component())
def test_mutated_photos(data: bytes) -> None:
    read_then_write(data)


def test_a_scan_naming_a_missing_component_is_the_photos_error() -> None:
    with pytest.raises(PhotoError, match="names a component its frame does not have"):
        read_photo(_scan_naming_a_missing_component())


MAGIC = [
    b"\xff\xd8\xff\xe0",
    b"\x89PNG\r\n\x1a\n",
    b"RIFF\x00\x00\x00\x00WEBPVP8L",
    b"\x00\x00\x00\x18ftypheic",
    b"\x00\x00\x00\x1cftypavif",
    b"II*\x00\x08\x00\x00\x00",
    b"",
]


@FUZZ
@given(st.sampled_from(MAGIC), st.binary(max_size=2048))
def test_random_bytes(magic: bytes, tail: bytes) -> None:
    read_then_write(magic + tail)


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_seeds_are_readable(name: str) -> None:
    """The mutations start from files the loader accepts, so they probe past the first check."""
    photo = read_photo(SEEDS[name])
    assert photo.format == {"mpo": "JPEG", "progressive": "JPEG"}.get(name, name.upper().replace("HEIC", "HEIF"))
    Image.open(io.BytesIO(encode_photo(photo, photo.rgb, marker={"version": "fuzz"}))).load()
