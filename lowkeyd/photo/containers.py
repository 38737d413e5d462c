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
