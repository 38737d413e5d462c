"""TIFF: the source file with only the strips or tiles that hold changed pixels compressed again.

A TIFF's tags (resolution, ICC profile, EXIF, whatever a scanner or editor added) live in
IFDs that point at the compressed strips or tiles. The output is the source file, byte for
byte, except that each strip or tile holding a changed pixel is compressed again with the
source's own compression and predictor and written in place (or, when it grew, at the end
of the file, its old bytes zeroed: they show the uncloaked face). Every other sample stays
bit for bit, as does the bit depth. The metadata is then edited through libexiv2
(:func:`lowkeyd.photo.exif.sanitise`), which keeps every tag it does not have to remove.

Single-page TIFFs with 8- or 16-bit grayscale or RGB samples (optionally with unassociated
alpha), stored chunky, uncompressed or LZW/Deflate compressed, are cloaked; anything else is
refused with its reason.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
import struct
import zlib
from dataclasses import dataclass
from typing import Literal

import exiv2
import imagecodecs
import numpy as np
import tifffile
from PIL import Image

from lowkeyd.errors import PhotoError
from lowkeyd.photo import exif, iptc
from lowkeyd.photo.codec import Cloaked, Codec, Inspection, read_block
from lowkeyd.photo.exif import ExifData
from lowkeyd.photo.model import SourceEncoding

# tifffile logs what it repairs in a damaged file; lowkeyd reports what matters in its own words.
logging.getLogger("tifffile").setLevel(logging.CRITICAL)

_COMPRESSIONS = {1: "none", 5: "LZW", 8: "Deflate", 32946: "Deflate"}
_PHOTOMETRICS = {1: "grayscale", 2: "RGB"}
_UNASSOCIATED_ALPHA = 2
# TIFF field types of offsets and byte counts: SHORT, LONG, LONG8.
_FIELD = {3: "H", 4: "I", 16: "Q"}
# The file's byte order, in struct's and NumPy's spelling.
ByteOrder = Literal["<", ">"]
# Photoshop keeps its layers, with their original pixels, in this private IFD0 tag.
_IMAGE_SOURCE_DATA = "Exif.Image.0x935c"
_IMAGE_RESOURCES = "Exif.Image.ImageResources"
# Chunk data starts on a word boundary, as TIFF asks.
_ALIGN = 2


@dataclass(frozen=True)
class TiffFacts:
    """What reading a TIFF's metadata found: the Photoshop block, GPS, and what the output leaves out."""

    photoshop: iptc.PhotoshopBlock | None
    has_gps: bool
    notes: tuple[str, ...]


def samples(data: bytes) -> tuple[np.ndarray, int]:
    """(stored (H, W, C) samples, bits per sample) of a TIFF lowkeyd can write back; ValueError with the reason."""
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = _page(tif)
        array = page.asarray()
    return (array[..., None] if array.ndim == 2 else array), int(page.bitspersample)


def check(data: bytes) -> None:
    """ValueError, with the reason in words, unless lowkeyd can write this TIFF back."""
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            _page(tif)
    except (tifffile.TiffFileError, struct.error, IndexError, KeyError) as exc:
        raise ValueError(f"an unreadable TIFF ({exc})") from exc


def _page(tif: tifffile.TiffFile) -> tifffile.TiffPage:
    """The one page of ``tif``, checked to be one lowkeyd writes back; ValueError naming what is not."""
    if len(tif.pages) != 1:
        raise ValueError(f"the TIFF holds {len(tif.pages)} pages; lowkeyd cloaks single-page TIFFs")
    page = tif.pages.first
    reasons = _storage_reasons(page) + _sample_reasons(page)
    if reasons:
        raise ValueError(f"a TIFF with {', '.join(reasons)}; lowkeyd writes back 8/16-bit grayscale or RGB TIFFs"
                         " (uncompressed, LZW or Deflate)")
    return page


def _storage_reasons(page: tifffile.TiffPage) -> list[str]:
    """What in the way the page stores its picture lowkeyd does not write back, in words."""
    reasons = []
    if page.subifds:
        reasons.append("sub-images (SubIFDs)")
    if page.compression not in _COMPRESSIONS:
        reasons.append(f"{_named(page.compression)} compression")
    if page.predictor not in (1, 2):
        reasons.append(f"predictor {page.predictor}")
    if page.photometric not in _PHOTOMETRICS:
        reasons.append(f"{_named(page.photometric)} colour")
    if page.planarconfig != 1:
        reasons.append("separate colour planes")
    return reasons


def _sample_reasons(page: tifffile.TiffPage) -> list[str]:
    """What in the page's samples and their layout lowkeyd does not write back, in words."""
    reasons = []
    if page.dtype not in (np.uint8, np.uint16) or page.bitspersample not in (8, 16):
        reasons.append(f"{page.bitspersample}-bit {page.dtype} samples")
    colours = 3 if page.photometric == 2 else 1
    extra = tuple(page.extrasamples)
    if page.samplesperpixel - colours > 1 or any(kind != _UNASSOCIATED_ALPHA for kind in extra):
        reasons.append("extra or premultiplied channels")
    if page.is_tiled and page.tiledepth > 1:
        reasons.append("volumetric tiles")
    missing = [name for name in _layout_tags(page) if name not in page.tags]
    if missing:
        reasons.append(f"no {' or '.join(missing)} (the writer needs them)")
    return reasons


def _named(code: int) -> str:
    """A TIFF code as tifffile names it, or its number where the code is unknown."""
    return str(getattr(code, "name", code))


def facts(data: bytes) -> TiffFacts:
    """Read the TIFF's metadata through libexiv2; ValueError when it cannot."""
    image = _open(data)
    found = image.exifData()
    notes = []
    layers = found.findKey(exiv2.ExifKey(_IMAGE_SOURCE_DATA))
    if layers != found.end():
        notes.append("Photoshop's layers (TIFF ImageSourceData; they hold the original pixels)")
        found.erase(layers)
    photoshop = None
    resources = found.findKey(exiv2.ExifKey(_IMAGE_RESOURCES))
    if resources != found.end():
        raw = iptc.PHOTOSHOP_HEADER + bytes(resources.value().data())
        photoshop = read_block(iptc.PhotoshopBlock.parse, raw, "the Photoshop resources (TIFF ImageResources; unreadable)", notes)
        found.erase(found.findKey(exiv2.ExifKey(_IMAGE_RESOURCES)))
    notes.extend(exif.leaks(found))  # the two blocks above are judged on their own
    has_gps = any(datum.groupName() == "GPSInfo" for datum in found) or _iptc_has_location(image.iptcData())
    return TiffFacts(photoshop, has_gps, tuple(notes))


def _open(data: bytes) -> exiv2.Image:
    try:
        image = exiv2.ImageFactory.open(data)
        image.readMetadata()
    except exiv2.Exiv2Error as exc:
        raise ValueError(f"libexiv2 cannot read the TIFF: {exc}") from exc
    return image


def _iptc_has_location(data: exiv2.IptcData) -> bool:
    return any(iptc.is_location(datum.record(), datum.tag()) for datum in data)


def with_pixels(source: bytes, before: np.ndarray, after: np.ndarray) -> bytes:
    """``source`` with the strips or tiles whose samples differ between ``before`` and ``after`` (stored (H, W, C)) rewritten."""
    out = bytearray(source)
    with tifffile.TiffFile(io.BytesIO(source)) as tif:
        page = _page(tif)
        order = tif.byteorder
        offsets_name, counts_name = _layout_tags(page)
        offsets_tag, counts_tag = page.tags[offsets_name], page.tags[counts_name]
        offsets, counts = list(page.dataoffsets), list(page.databytecounts)
        chunks = _chunks(page)
        if len(chunks) != len(offsets) or any(o + n > len(source) for o, n in zip(offsets, counts, strict=True)):
            raise ValueError("the TIFF's strips or tiles do not match its size")
        # Writers may point blank tiles at one shared copy: that copy is never overwritten.
        shared = {offset for offset, uses in Counter(offsets).items() if uses > 1}
        for index, (rows, cols) in enumerate(chunks):
            if np.array_equal(before[rows, cols], after[rows, cols]):
                continue
            coded = _compress(page, _chunk_samples(page, after, rows, cols), order)
            old_start, old_size = offsets[index], counts[index]
            if old_start not in shared:
                out[old_start : old_start + old_size] = bytes(old_size)  # the old data shows the original face
            if len(coded) <= old_size and old_start not in shared:
                out[old_start : old_start + len(coded)] = coded
            else:
                out.extend(bytes(-len(out) % _ALIGN))
                offsets[index] = len(out)
                out.extend(coded)
            counts[index] = len(coded)
        _patch(out, offsets_tag, offsets, order)
        _patch(out, counts_tag, counts, order)
    return bytes(out)


def _layout_tags(page: tifffile.TiffPage) -> tuple[str, str]:
    """The names of the tags that say where the strips or tiles are and how long."""
    return ("TileOffsets", "TileByteCounts") if page.is_tiled else ("StripOffsets", "StripByteCounts")


def _chunks(page: tifffile.TiffPage) -> list[tuple[slice, slice]]:
    """The (rows, columns) of the image each strip or tile covers, in the order of their offsets."""
    height, width = page.imagelength, page.imagewidth
    if page.is_tiled:
        tile_h, tile_w = page.tilelength, page.tilewidth
        return [
            (slice(top, min(top + tile_h, height)), slice(left, min(left + tile_w, width)))
            for top in range(0, height, tile_h)
            for left in range(0, width, tile_w)
        ]
    step = min(page.rowsperstrip or height, height)
    return [(slice(top, min(top + step, height)), slice(0, width)) for top in range(0, height, step)]


def _chunk_samples(page: tifffile.TiffPage, pixels: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
    """The samples one strip or tile stores: a tile is always whole, padded past the image's edge."""
    chunk = pixels[rows, cols]
    if not page.is_tiled:
        return chunk
    pad = ((0, page.tilelength - chunk.shape[0]), (0, page.tilewidth - chunk.shape[1]), (0, 0))
    return np.pad(chunk, pad, mode="edge")


def _compress(page: tifffile.TiffPage, chunk: np.ndarray, order: ByteOrder) -> bytes:
    """A strip or tile coded as the source codes them: its byte order, predictor and compression."""
    stored = chunk.astype(chunk.dtype.newbyteorder(order), copy=False)
    if page.predictor == 2:  # horizontal differencing, modulo the sample size
        stored = stored.copy()
        stored[:, 1:] = stored[:, 1:] - chunk[:, :-1]
    raw = np.ascontiguousarray(stored).tobytes()
    if page.compression == 1:
        return raw
    if page.compression == 5:
        try:
            return bytes(imagecodecs.lzw_encode(raw))
        except imagecodecs.LzwError as exc:
            raise ValueError(f"LZW cannot code a strip: {exc}") from exc
    return zlib.compress(raw, 6)


def _patch(out: bytearray, tag: tifffile.TiffTag, values: list[int], order: ByteOrder) -> None:
    """Write ``values`` over a tag's array, in its own field type; ValueError where one does not fit."""
    code = _FIELD.get(int(tag.dtype))
    if code is None:
        raise ValueError(f"TIFF {tag.name} has field type {tag.dtype}")
    try:
        packed = struct.pack(f"{order}{len(values)}{code}", *values)
    except struct.error as exc:
        raise ValueError(f"the rewritten TIFF's {tag.name} do not fit its field type") from exc
    out[tag.valueoffset : tag.valueoffset + len(packed)] = packed


def with_metadata(
    data: bytes, *, strip_gps: bool, xmp: bytes | None, photoshop: bytes | None, person_names: set[str]
) -> bytes:
    """``data`` with its metadata edited by libexiv2: what leaks removed, the cleaned XMP packet set (None: none)."""
    image = _open(data)
    found = image.exifData()
    exif.sanitise(found, strip_gps=strip_gps)
    for key in (_IMAGE_SOURCE_DATA, _IMAGE_RESOURCES):
        position = found.findKey(exiv2.ExifKey(key))
        if position != found.end():
            found.erase(position)
    if photoshop:
        found[_IMAGE_RESOURCES] = exiv2.DataValue(
            photoshop.removeprefix(iptc.PHOTOSHOP_HEADER), exiv2.ByteOrder.invalidByteOrder, exiv2.TypeId.undefined
        )
    records = image.iptcData()
    doomed = [
        datum.key()
        for datum in records
        if iptc.leaks(datum.record(), datum.tag(), datum.toString().encode("utf-8"), strip_location=strip_gps,
                      person_names=person_names)
    ]
    for key in doomed:
        records.erase(records.findKey(exiv2.IptcKey(key)))
    image.setXmpPacket(xmp.decode("utf-8") if xmp is not None else "")
    image.writeXmpFromPacket(True)
    try:
        image.writeMetadata()
    except exiv2.Exiv2Error as exc:
        raise ValueError(f"libexiv2 cannot write the TIFF's metadata: {exc}") from exc
    return bytes(image.io().mmap())


class TiffCodec(Codec):
    """Read and written by tifffile and libexiv2; Pillow only opens the file and reads its EXIF."""

    name = "TIFF"
    label = "TIFF"
    extensions = (".tif", ".tiff")

    def refusal(self, image: Image.Image) -> str | None:
        return None  # the pages are counted and the samples judged by tifffile (Pillow's count can fail on a damaged page)

    def inspect(self, image: Image.Image, data: bytes, name: str, dropped: list[str]) -> Inspection:
        try:
            check(data)
            found = facts(data)
        except ValueError as exc:
            raise PhotoError(f"{name}: {exc}") from exc
        dropped.extend(found.notes)
        return Inspection(SourceEncoding(photoshop=found.photoshop, tiff_gps=found.has_gps))

    def samples(self, image: Image.Image, data: bytes) -> tuple[np.ndarray, int] | None:
        return samples(data)  # always tifffile's: the output is written back in its layout

    def kept_orientation(self, orientation: int, exif: ExifData | None, dropped: list[str]) -> int:
        return orientation  # the file's own Orientation tag stays

    def encode(self, cloaked: Cloaked) -> bytes:
        """The source file with only the changed strips or tiles compressed again, its metadata edited by libexiv2."""
        assert cloaked.samples is not None  # a TIFF's samples are always kept
        pixels = with_pixels(cloaked.photo.source_bytes, cloaked.source_samples, cloaked.samples)
        return with_metadata(
            pixels, strip_gps=cloaked.strip_gps, xmp=cloaked.packet, photoshop=cloaked.photoshop(),
            person_names=cloaked.person_names,
        )


CODEC = TiffCodec()
