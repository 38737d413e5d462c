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

from lowkeyd.photo.containers import PNG_SIGNATURE, jpeg_layout, png_chunks

_BMFF_BRANDS = b"ftyp"


def looks_complete(data: bytes) -> bool:
    """True when ``data`` (a whole file, e.g. an mmap) is a complete JPEG, PNG, WebP, HEIF or AVIF container."""
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
    except ValueError:
        return False
    return False


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
