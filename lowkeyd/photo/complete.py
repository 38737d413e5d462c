"""Whether a photo file has all its bytes, told from its container alone (no pixel is decoded).

A file that a phone or a sync client is still writing holds still between
chunks; decoding it to find out costs a full decode (gigabytes for a 100 MP
PNG). The container says it more cheaply: a JPEG ends with its EOI marker, a
PNG with its IEND chunk, a WebP's RIFF header states its length and a HEIF's
boxes must add up to the file with its ``meta`` and ``mdat`` present. A file
this cannot vouch for is not necessarily broken: the caller decides how long
to wait for it.
"""

from __future__ import annotations

import io
import struct

import tifffile

from lowkeyd.photo import tiff  # noqa: F401  (quiets tifffile's logging of damaged files)
from lowkeyd.photo.containers import PNG_SIGNATURE, jpeg_layout, png_chunks

_BMFF_BRANDS = b"ftyp"


def looks_complete(data: bytes) -> bool:
    """True when ``data`` (a whole file, e.g. an mmap) is a complete JPEG, PNG, WebP, HEIF, AVIF or TIFF container."""
    try:
        if data[:3] == b"\xff\xd8\xff":
            return jpeg_layout(data).is_image
        if data[:8] == PNG_SIGNATURE:
            png_chunks(data)
            return True
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return int.from_bytes(data[4:8], "little") + 8 <= len(data)
        if data[4:8] == _BMFF_BRANDS:
            return _bmff_complete(data)
        if data[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
            return _tiff_complete(data)
    except ValueError:
        return False
    return False


def _tiff_complete(data: bytes) -> bool:
    """Every IFD, every tag value and every strip or tile lies inside the file."""
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            pages = list(tif.pages)
            if not pages or not all(_ifd_inside(data, page.offset, tif.byteorder, tif.is_bigtiff) for page in pages):
                return False
            return all(
                page.dataoffsets and all(
                    0 < offset and offset + count <= len(data)
                    for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True)
                )
                for page in pages
            )
    except (tifffile.TiffFileError, struct.error, IndexError, KeyError, ValueError):
        return False


# Bytes per value of each TIFF field type.
_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}


def _ifd_inside(data: bytes, offset: int, order: str, big: bool) -> bool:
    """Whether one IFD and the values its entries point at lie inside ``data`` (tifffile skips a tag that does not)."""
    count_format, entry_format, entry_size, inline = ("Q", "HHQQ", 20, 8) if big else ("H", "HHII", 12, 4)
    (entries,) = struct.unpack_from(order + count_format, data, offset)
    start = offset + struct.calcsize(count_format)
    for index in range(entries):
        _, kind, count, value = struct.unpack_from(order + entry_format, data, start + index * entry_size)
        size = _TIFF_TYPE_SIZES.get(kind, 1) * count
        if size > inline and value + size > len(data):
            return False
    return True


def _bmff_complete(data: bytes) -> bool:
    kinds = set()
    pos, n = 0, len(data)
    while pos < n:
        if pos + 8 > n:
            return False
        size = int.from_bytes(data[pos : pos + 4], "big")
        if size == 1:
            if pos + 16 > n:
                return False
            size = int.from_bytes(data[pos + 8 : pos + 16], "big")
        elif size == 0:  # runs to the end of the file: nothing says where that is
            return False
        if size < 8:
            return False
        kinds.add(data[pos + 4 : pos + 8])
        pos += size
    return pos == n and {b"meta", b"mdat"} <= kinds
