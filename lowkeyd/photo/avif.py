"""AVIF: Pillow's reader and writer, with the coding details Pillow does not keep: chroma subsampling and depth.

Pillow reads and writes AVIF at 8 bits and writes 4:2:0 unless told otherwise: a 4:4:4 source
would lose the sharpness of its colour edges (up to 59 levels on a saturated edge) and a
10-bit one its depth. The source's AV1 configuration (``av1C``) says both. Deep samples are
read and coded by libavif through ``imagecodecs``, which writes no metadata: the output is
Pillow's 8-bit file, which carries EXIF, XMP, ICC and orientation, with its coded picture,
AV1 configuration, pixel depth and colour description replaced by the deep encode's
(:func:`deep_file`). An AVIF is written upright: Pillow re-serialises (and so mangles) EXIF
that has an Orientation tag.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import imagecodecs
import numpy as np
from PIL import Image

from lowkeyd.photo import containers
from lowkeyd.photo.codec import Cloaked, Codec, Inspection, source_image_bytes
from lowkeyd.photo.exif import ORIENTATION, ExifData
from lowkeyd.photo.model import SourceEncoding
from lowkeyd.photo.sizing import match_size

# The boxes of the picture's own coding, taken from the deep encode; each is the same size in both files.
_CODING_BOXES = (b"av1C", b"pixi")
_SUBSAMPLING = {(0, 0): "4:4:4", (1, 0): "4:2:2", (1, 1): "4:2:0"}
_PIXEL_FORMATS = {"4:4:4": 1, "4:2:2": 2, "4:2:0": 3, "4:0:0": 4}  # libavif's avifPixelFormat


@dataclass(frozen=True)
class AvifCoding:
    """The primary picture's depth, chroma subsampling and colour description (CICP; None if not given)."""

    bits: int
    subsampling: str  # Pillow's notation: "4:2:0", "4:2:2", "4:4:4" or "4:0:0"
    cicp: tuple[int, int, int] | None  # colour primaries, transfer characteristics, matrix coefficients


def coding(data: bytes) -> AvifCoding:
    """Read an AVIF's coding from its first ``av1C`` and ``nclx`` boxes; ValueError without an ``av1C``."""
    properties = dict(containers.bmff_properties(data))
    config = properties.get(b"av1C")
    if config is None or len(config) < 3:
        raise ValueError("AVIF has no AV1 configuration")
    flags = config[2]  # seq_tier_0, high_bitdepth, twelve_bit, monochrome, subsampling_x, subsampling_y, ...
    bits = 12 if flags & 0x20 else 10 if flags & 0x40 else 8
    subsampling = "4:0:0" if flags & 0x10 else _SUBSAMPLING.get(((flags >> 3) & 1, (flags >> 2) & 1), "4:2:0")
    colour = properties.get(b"colr")
    cicp = None
    if colour is not None and colour[:4] == b"nclx" and len(colour) >= 10:
        cicp = (int.from_bytes(colour[4:6], "big"), int.from_bytes(colour[6:8], "big"), int.from_bytes(colour[8:10], "big"))
    return AvifCoding(bits, subsampling, cicp)


def samples(data: bytes) -> np.ndarray:
    """The primary picture's (H, W, C) samples at their own depth (uint16 for 10 and 12 bits)."""
    array = imagecodecs.avif_decode(data)
    return array[..., None] if array.ndim == 2 else array


def deep_file(carrier: bytes, pixels: np.ndarray, source: AvifCoding, quality: int) -> bytes:
    """``carrier`` (Pillow's 8-bit AVIF of the same picture) with its picture coded from ``pixels`` at the source's depth.

    Only a picture without alpha: an alpha plane is a second item this does not replace.
    """
    # None: libavif's own defaults, as for a source that does not say.
    primaries, transfer, matrix = source.cicp if source.cicp is not None else (None, None, None)
    try:
        deep = bytes(
            imagecodecs.avif_encode(
                pixels[..., 0] if pixels.shape[2] == 1 else pixels,
                quality,
                bitspersample=source.bits,
                pixelformat=_PIXEL_FORMATS[source.subsampling],
                primaries=primaries,
                transfer=transfer,
                matrix=matrix,
            )
        )
    except imagecodecs.AvifError as exc:
        raise ValueError(f"libavif cannot code the {source.bits}-bit picture: {exc}") from exc
    out = bytearray(containers.bmff_with_primary_data(carrier, containers.bmff_primary_data(deep)))
    donors = _coding_spans(deep)
    for kind, (start, end) in _coding_spans(bytes(out)).items():
        donor = donors.get(kind)
        if donor is None or donor[1] - donor[0] != end - start:
            raise ValueError(f"the deep AVIF's {kind.decode()} box does not fit Pillow's")
        out[start:end] = deep[donor[0] : donor[1]]
    return bytes(out)


def _coding_spans(data: bytes) -> dict[bytes, tuple[int, int]]:
    """Payload spans of the boxes that describe the coded picture: av1C, pixi, and the colr box given as nclx."""
    spans: dict[bytes, tuple[int, int]] = {}
    for kind, (start, end) in containers.bmff_property_spans(data):
        key = b"nclx" if kind == b"colr" and data[start : start + 4] == b"nclx" else kind
        if key in _CODING_BOXES + (b"nclx",):
            spans.setdefault(key, (start, end))
    return spans


class AvifCodec(Codec):
    name = "AVIF"
    label = "AVIF"
    extensions = (".avif",)
    exif_without = frozenset({ORIENTATION})

    def inspect(self, image: Image.Image, data: bytes, name: str, dropped: list[str]) -> Inspection:
        try:
            found = coding(data)
        except ValueError:  # Pillow decoded it; the output is then written at Pillow's defaults
            return Inspection(SourceEncoding(image_bytes=source_image_bytes(image, data)))
        if found.bits > 8 and not _deep_mode(image):
            dropped.append(f"the AVIF's {found.bits}-bit depth (with alpha it is written at 8 bits)")
        return Inspection(SourceEncoding(image_bytes=source_image_bytes(image, data), avif=found))

    def deep_samples(self, image: Image.Image, data: bytes) -> tuple[np.ndarray, int] | None:
        found = coding(data)
        if found.bits <= 8 or not _deep_mode(image):
            return None
        return samples(data), found.bits

    def kept_orientation(self, orientation: int, exif: ExifData | None, dropped: list[str]) -> int:
        if exif is not None and exif.has(ORIENTATION):
            dropped.append("the EXIF Orientation tag (the AVIF is written upright: Pillow rewrites EXIF that has one)")
        return 1

    def encode(self, cloaked: Cloaked) -> bytes:
        source = cloaked.photo.encoding.avif
        # The source's chroma subsampling: Pillow's default 4:2:0 blurs a 4:4:4 source's colour edges.
        subsampling = {"subsampling": source.subsampling} if source is not None else {}
        packet = cloaked.packet or b""

        def pillow(quality: int) -> bytes:
            out = io.BytesIO()
            cloaked.image.save(out, format="AVIF", quality=quality, xmp=packet, **subsampling, **cloaked.pillow_options())
            return out.getvalue()

        at = pillow
        if cloaked.samples is not None and source is not None:  # deeper than 8 bits: Pillow's file lends its metadata boxes
            at = functools.partial(deep_file, pillow(1), cloaked.samples, source)
        return match_size(at, cloaked.size_target())[0]


def _deep_mode(image: Image.Image) -> bool:
    """Whether a deep picture keeps its depth: :func:`deep_file` replaces no alpha plane."""
    return image.mode in ("RGB", "L")


CODEC = AvifCodec()
