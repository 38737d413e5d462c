"""Byte-level layout of photo containers: JPEG markers, PNG chunks, RIFF chunks, ISO-BMFF boxes.

Pillow decodes pixels but does not say where a JPEG ends, which PNG chunks a file
has or whether a HEIC carries a video box; these walkers answer exactly that and
nothing more. Each raises ValueError on a malformed container.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass

# JPEG markers with no length field: TEM and RST0-RST7.
_STANDALONE = {0x01, *range(0xD0, 0xD8)}
# SOF markers that start a frame; C4 (DHT), C8 (JPG) and CC (DAC) share the range but are not frames.
SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
SOS = 0xDA
ADOBE = 0xEE  # APP14, Adobe's: how the scans code colour


@dataclass(frozen=True)
class JpegLayout:
    """The marker segments of one JPEG stream and the offset just past its EOI."""

    segments: tuple[tuple[int, bytes], ...]  # (marker byte, payload without the length field)
    end: int
    starts: tuple[int, ...] = ()  # offset of each segment's 0xFF marker byte, in the same order

    def app(self, n: int) -> Iterator[bytes]:
        """Payloads of the APPn segments, in file order."""
        return (payload for marker, payload in self.segments if marker == 0xE0 + n)

    @property
    def is_image(self) -> bool:
        """True when the stream has a frame header and scan data, so it decodes to a picture."""
        markers = {marker for marker, _ in self.segments}
        return SOS in markers and bool(markers & SOF_MARKERS)


def jpeg_layout(data: bytes, start: int = 0) -> JpegLayout:
    """Walk the JPEG stream that begins at ``data[start]`` up to and including its EOI."""
    n = len(data)
    if data[start : start + 3] != b"\xff\xd8\xff":
        raise ValueError("no JPEG start-of-image marker")
    pos = start + 2
    segments: list[tuple[int, bytes]] = []
    starts: list[int] = []
    while True:
        if pos >= n or data[pos] != 0xFF:
            raise ValueError("JPEG marker expected")
        while pos < n and data[pos] == 0xFF:  # fill bytes may precede any marker
            pos += 1
        if pos >= n:
            raise ValueError("JPEG ends inside a marker")
        marker = data[pos]
        pos += 1
        if marker == 0xD9:
            return JpegLayout(tuple(segments), pos, tuple(starts))
        if marker in _STANDALONE:
            continue
        if pos + 2 > n:
            raise ValueError("JPEG ends inside a segment length")
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2 or pos + length > n:
            raise ValueError("JPEG segment overruns the file")
        segments.append((marker, data[pos + 2 : pos + length]))
        starts.append(pos - 2)
        pos += length
        if marker == SOS:
            pos = _end_of_entropy_data(data, pos)


def _end_of_entropy_data(data: bytes, pos: int) -> int:
    """Offset of the first marker after a scan: 0xFF not followed by a stuffed zero or an RST."""
    while True:
        pos = data.find(b"\xff", pos)
        if pos == -1 or pos + 1 >= len(data):
            raise ValueError("JPEG scan data runs to the end of the file")
        follower = data[pos + 1]
        if follower == 0x00 or 0xD0 <= follower <= 0xD7 or follower == 0xFF:
            pos += 1
            continue
        return pos


def embedded_jpegs(blob: bytes) -> Iterator[tuple[int, int]]:
    """(start, end) of every complete JPEG picture stored inside an opaque blob."""
    pos = 0
    while (start := blob.find(b"\xff\xd8\xff", pos)) != -1:
        try:
            layout = jpeg_layout(blob, start)
        except ValueError:
            pos = start + 1
            continue
        if layout.is_image:
            yield start, layout.end
            pos = layout.end
        else:
            pos = start + 1


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk up to IEND."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("no PNG signature")
    chunks: list[tuple[bytes, bytes]] = []
    pos = len(PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        if pos + 12 + length > len(data):
            raise ValueError("PNG chunk overruns the file")
        chunks.append((kind, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
        if kind == b"IEND":
            return chunks
    raise ValueError("PNG has no IEND chunk")


def riff_chunks(data: bytes) -> list[bytes]:
    """FourCCs of the chunks of a RIFF/WEBP file, in order."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise ValueError("not a RIFF WEBP file")
    kinds: list[bytes] = []
    pos = 12
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        kinds.append(data[pos : pos + 4])
        pos += 8 + size + (size & 1)
    return kinds


def bmff_boxes(data: bytes) -> list[bytes]:
    """Types of the top-level boxes of an ISO base media file (HEIF, AVIF, MP4)."""
    kinds: list[bytes] = []
    pos = 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        if size == 1:
            size = int.from_bytes(data[pos + 8 : pos + 16], "big")
        elif size == 0:
            size = len(data) - pos
        if size < 8:
            raise ValueError("ISO-BMFF box smaller than its header")
        kinds.append(kind)
        pos += size
    return kinds


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, payload, CRC of type and payload."""
    return len(payload).to_bytes(4, "big") + kind + payload + zlib.crc32(kind + payload).to_bytes(4, "big")


def png_with_chunks(data: bytes, chunks: tuple[tuple[bytes, bytes], ...]) -> bytes:
    """``data`` with ``chunks`` (type, payload) inserted right after its header, where each of them may stand."""
    header_end = len(PNG_SIGNATURE) + 12 + int.from_bytes(data[len(PNG_SIGNATURE) : len(PNG_SIGNATURE) + 4], "big")
    return data[:header_end] + b"".join(png_chunk(kind, payload) for kind, payload in chunks) + data[header_end:]


def png_with_image(carrier: bytes, picture: bytes) -> bytes:
    """``carrier``'s chunks with its header and image data (IHDR, IDAT) replaced by ``picture``'s.

    Lets one encoder code the samples and another write the ancillary chunks around them.
    """
    coded = png_chunks(picture)
    header = [payload for kind, payload in coded if kind == b"IHDR"]
    data = b"".join(png_chunk(kind, payload) for kind, payload in coded if kind == b"IDAT")
    out = [PNG_SIGNATURE, png_chunk(b"IHDR", header[0])]
    for kind, payload in png_chunks(carrier):
        if kind == b"IDAT":
            out.append(data)
            data = b""
        elif kind != b"IHDR":
            out.append(png_chunk(kind, payload))
    return b"".join(out)


def _bmff_children(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int, int]]:
    """(type, box start, payload start, box end) of the boxes between ``start`` and ``end``."""
    pos = start
    while pos + 8 <= end:
        size = int.from_bytes(data[pos : pos + 4], "big")
        header = 8
        if size == 1:
            size, header = int.from_bytes(data[pos + 8 : pos + 16], "big"), 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise ValueError("ISO-BMFF box overruns its parent")
        yield data[pos + 4 : pos + 8], pos, pos + header, pos + size
        pos += size


def _bmff_child(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int, int]:
    """(box start, payload start, box end) of the first ``kind`` box between ``start`` and ``end``."""
    for found, box, payload, stop in _bmff_children(data, start, end):
        if found == kind:
            return box, payload, stop
    raise ValueError(f"ISO-BMFF {kind.decode('latin-1')} box missing")


def _bmff_meta(data: bytes) -> tuple[int, int]:
    """(first child, end) of the top-level ``meta`` box (a full box: 4 bytes of version and flags first)."""
    _, payload, end = _bmff_child(data, 0, len(data), b"meta")
    return payload + 4, end


def bmff_property_spans(data: bytes) -> list[tuple[bytes, tuple[int, int]]]:
    """(type, (payload start, payload end)) of the item properties (meta/iprp/ipco) of a HEIF or AVIF file."""
    start, end = _bmff_meta(data)
    _, iprp, iprp_end = _bmff_child(data, start, end, b"iprp")
    _, ipco, ipco_end = _bmff_child(data, iprp, iprp_end, b"ipco")
    return [(kind, (payload, stop)) for kind, _, payload, stop in _bmff_children(data, ipco, ipco_end)]


def bmff_properties(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of the item properties of a HEIF or AVIF file, in order."""
    return [(kind, data[start:end]) for kind, (start, end) in bmff_property_spans(data)]


@dataclass(frozen=True)
class _Iloc:
    """An ``iloc`` box: where each item's data lies."""

    span: tuple[int, int]  # payload start and end of the box in the file
    version: int
    sizes: tuple[int, int, int, int]  # offset, length, base offset, index field sizes in bytes
    items: tuple[tuple[int, int, int, tuple[tuple[int, int, int], ...]], ...]  # id, method|reserved, base, extents


def _read_iloc(data: bytes) -> _Iloc:
    start, end = _bmff_meta(data)
    _, payload, stop = _bmff_child(data, start, end, b"iloc")
    version = data[payload]
    pos = payload + 4
    offset_size, length_size = data[pos] >> 4, data[pos] & 15
    base_size, index_size = data[pos + 1] >> 4, (data[pos + 1] & 15) if version else 0
    pos += 2

    def take(size: int) -> int:
        nonlocal pos
        value = int.from_bytes(data[pos : pos + size], "big")
        pos += size
        return value

    items = []
    for _ in range(take(4 if version == 2 else 2)):
        item_id = take(4 if version == 2 else 2)
        method = take(2) if version else 0
        if take(2) != 0 or method & 15:
            raise ValueError("ISO-BMFF item data outside the file's mdat")
        base = take(base_size)
        extents = tuple((take(index_size), take(offset_size), take(length_size)) for _ in range(take(2)))
        items.append((item_id, method, base, extents))
    if pos > stop:
        raise ValueError("ISO-BMFF iloc box overruns itself")
    return _Iloc((payload, stop), version, (offset_size, length_size, base_size, index_size), tuple(items))


def _primary_id(data: bytes) -> int:
    start, end = _bmff_meta(data)
    _, payload, stop = _bmff_child(data, start, end, b"pitm")
    return int.from_bytes(data[payload + 4 : stop], "big")


def bmff_primary_data(data: bytes) -> bytes:
    """The coded data of a HEIF or AVIF file's primary item."""
    primary = _primary_id(data)
    for item_id, _, base, extents in _read_iloc(data).items:
        if item_id == primary:
            return b"".join(data[base + offset : base + offset + length] for _, offset, length in extents)
    raise ValueError("ISO-BMFF primary item has no location")


def bmff_with_primary_data(data: bytes, coded: bytes) -> bytes:
    """A HEIF or AVIF file with its primary item's data replaced by ``coded``: one new ``mdat`` holds every item."""
    iloc = _read_iloc(data)
    primary = _primary_id(data)
    mdat, _, mdat_end = _bmff_child(data, 0, len(data), b"mdat")
    if mdat < iloc.span[1]:
        raise ValueError("ISO-BMFF mdat before meta")
    offset_size, length_size, base_size, index_size = iloc.sizes
    body: list[bytes] = []
    at = mdat + 8
    header = bytearray(data[iloc.span[0] : iloc.span[0] + 6])
    entries = [len(iloc.items).to_bytes(4 if iloc.version == 2 else 2, "big")]
    for item_id, method, base, extents in iloc.items:
        chunks = [coded] if item_id == primary else [data[base + o : base + o + n] for _, o, n in extents]
        entry = item_id.to_bytes(4 if iloc.version == 2 else 2, "big")
        entry += (method.to_bytes(2, "big") if iloc.version else b"") + b"\0\0" + bytes(base_size)
        entry += len(chunks).to_bytes(2, "big")
        for chunk in chunks:
            if at >= 1 << (8 * offset_size) or len(chunk) >= 1 << (8 * length_size):
                raise ValueError("ISO-BMFF item offsets do not fit the iloc box")
            entry += bytes(index_size) + at.to_bytes(offset_size, "big") + len(chunk).to_bytes(length_size, "big")
            body.append(chunk)
            at += len(chunk)
        entries.append(entry)
    rebuilt = bytes(header) + b"".join(entries)
    if len(rebuilt) != iloc.span[1] - iloc.span[0]:
        raise ValueError("ISO-BMFF iloc box would change size")
    payload = b"".join(body)
    return (
        data[: iloc.span[0]] + rebuilt + data[iloc.span[1] : mdat]
        + (len(payload) + 8).to_bytes(4, "big") + b"mdat" + payload + data[mdat_end:]
    )
