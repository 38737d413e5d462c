"""A JPEG output as the source's own segments: metadata edited in place, image data reused or patched.

The output is assembled from the source file rather than re-encoded: every marker segment
lowkeyd has no reason to touch (JFIF with its density, ICC, COM, unknown APPn) is
copied byte for byte and in order; EXIF, XMP and the Photoshop/IPTC block are replaced by
their sanitised versions; segments that can only leak (thumbnails, MPF images, extended XMP,
content credentials) are left out; nothing after the EOI is written. The image data (Adobe
colour transform, tables, frame, scans) is the source's when no pixel changed, or the
block-exact re-encoding otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator

from lowkeyd.photo.containers import SOS, JpegLayout, embedded_jpegs, jpeg_layout
from lowkeyd.photo.exif import EXIF_HEADER
from lowkeyd.photo.iptc import PHOTOSHOP_HEADER

SOI = b"\xff\xd8"
XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\0"
EXTENDED_XMP_HEADER = b"http://ns.adobe.com/xmp/extension/\0"
MAX_SEGMENT_PAYLOAD = 65533
_COM = 0xFE

# What becomes of a metadata segment: copied, replaced by lowkeyd's version, or dropped.
KEEP, EXIF, XMP, PHOTOSHOP = "keep", "exif", "xmp", "photoshop"
FATES = (KEEP, EXIF, XMP, PHOTOSHOP)


def segment_fate(marker: int, payload: bytes) -> str:
    """KEEP, EXIF, XMP, PHOTOSHOP, or for a segment that is left out, why (in words, for reports)."""
    if marker == 0xE0 and payload.startswith(b"JFXX"):
        return "the JFIF thumbnail"
    if marker == 0xE1 and payload.startswith(EXIF_HEADER):
        return EXIF
    if marker == 0xE1 and payload.startswith(XMP_HEADER):
        return XMP
    if marker == 0xE1 and payload.startswith(EXTENDED_XMP_HEADER):
        return "extended XMP"
    if marker == 0xE2 and payload.startswith(b"MPF\0"):
        return "the MPF index of secondary images"
    if marker == 0xEB:
        return "JUMBF/C2PA content credentials (APP11; they vouch for the original pixels)"
    if marker == 0xED and payload.startswith(PHOTOSHOP_HEADER):
        return PHOTOSHOP
    if any(True for _ in embedded_jpegs(payload)):
        return f"a preview picture in an {_name(marker)} segment"
    return KEEP


def _name(marker: int) -> str:
    return "COM" if marker == _COM else f"APP{marker - 0xE0}"


def _is_metadata(marker: int, payload: bytes) -> bool:
    # Adobe's APP14 says how the scans code colour (YCbCr, CMYK or YCCK): it goes with the picture.
    adobe = marker == 0xEE and payload.startswith(b"Adobe")
    return (0xE0 <= marker <= 0xEF or marker == _COM) and not adobe


def metadata_segments(data: bytes, layout: JpegLayout | None = None) -> Iterator[tuple[int, bytes]]:
    """(marker, payload) of the APPn and COM segments before the first scan."""
    layout = layout or jpeg_layout(data)
    for marker, payload in layout.segments:
        if marker == SOS:
            return
        if _is_metadata(marker, payload):
            yield marker, payload


def image_data(data: bytes) -> bytes:
    """Everything of a JPEG stream that makes the picture: tables, frame header, scans and EOI."""
    layout = jpeg_layout(data)
    parts: list[bytes] = []
    for index, (marker, payload) in enumerate(layout.segments):
        start = layout.starts[index]
        if marker == SOS:
            parts.append(data[start : layout.end])
            return b"".join(parts)
        if not _is_metadata(marker, payload):
            parts.append(data[start : start + 4 + len(payload)])
    raise ValueError("JPEG has no scan")


def segment(marker: int, payload: bytes) -> bytes:
    if len(payload) > MAX_SEGMENT_PAYLOAD:
        raise ValueError(f"{_name(marker)} of {len(payload)} bytes does not fit in one JPEG segment")
    return bytes((0xFF, marker)) + (len(payload) + 2).to_bytes(2, "big") + payload


def _photoshop_segments(block: bytes) -> list[bytes]:
    """A Photoshop block as APP13 segments, split as Photoshop does when it exceeds one (each with the header)."""
    body = block.removeprefix(PHOTOSHOP_HEADER)
    room = MAX_SEGMENT_PAYLOAD - len(PHOTOSHOP_HEADER)
    return [segment(0xED, PHOTOSHOP_HEADER + body[at : at + room]) for at in range(0, max(len(body), 1), room)]


def assemble(
    source: bytes, *, exif: bytes | None, xmp: bytes | None, photoshop: bytes | None, image: bytes | None = None
) -> bytes:
    """The output stream: the source's metadata segments as :func:`segment_fate` decides, then ``image``.

    ``exif``, ``photoshop`` and ``xmp`` (the packet without its header) are the sanitised payloads
    (None: left out); ``image`` is :func:`image_data` of the re-encoded picture, or None for the
    source's own, byte for byte.
    """
    out = [SOI]
    written: set[str] = set()
    for marker, payload in metadata_segments(source):
        fate = segment_fate(marker, payload)
        if fate in written or fate not in FATES:
            continue  # only the first EXIF/XMP/Photoshop segment is the real one
        if fate == KEEP:
            out.append(segment(marker, payload))
            continue
        written.add(fate)
        if fate == EXIF and exif:
            out.append(segment(marker, exif))
        elif fate == PHOTOSHOP and photoshop:
            out.extend(_photoshop_segments(photoshop))
        elif fate == XMP and xmp is not None:
            out.append(segment(marker, XMP_HEADER + xmp))
        if fate == EXIF and XMP not in written and xmp is not None:  # XMP follows EXIF, where readers expect it
            written.add(XMP)
            out.append(segment(0xE1, XMP_HEADER + xmp))
    if XMP not in written and xmp is not None:
        # No EXIF and no XMP in the source: the packet goes after the leading APP0 (JFIF), if any.
        at = 2 if len(out) > 1 and out[1][1] == 0xE0 else 1
        out.insert(at, segment(0xE1, XMP_HEADER + xmp))
    out.append(image if image is not None else image_data(source))
    return b"".join(out)
