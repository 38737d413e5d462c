"""JPEG (MPO included): the output is the source's own segments, metadata edited in place, image data reused or patched.

The output is assembled from the source file rather than re-encoded: every marker segment
lowkeyd has no reason to touch (JFIF with its density, ICC, COM, unknown APPn) is
copied byte for byte and in order; EXIF, XMP and the Photoshop/IPTC block are replaced by
their sanitised versions; segments that can only leak (thumbnails, MPF images, extended XMP,
content credentials) are left out; nothing after the EOI is written. The image data (Adobe
colour transform, tables, frame, scans) is the source's when no pixel changed, or the
block-exact re-encoding otherwise (:mod:`lowkeyd.photo.jpegblocks`), in the source's scan
mode (:mod:`lowkeyd.photo.jpegscans`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from PIL import Image

from lowkeyd.errors import PhotoError
from lowkeyd.photo import jpegblocks, jpegscans
from lowkeyd.photo.codec import Cloaked, Codec, Inspection, read_block, stored_image
from lowkeyd.photo.containers import ADOBE, SOS, JpegLayout, embedded_jpegs, jpeg_layout
from lowkeyd.photo.exif import EXIF_HEADER
from lowkeyd.photo.iptc import PHOTOSHOP_HEADER, PhotoshopBlock
from lowkeyd.photo.model import SourceEncoding

SOI = b"\xff\xd8"
XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\0"
EXTENDED_XMP_HEADER = b"http://ns.adobe.com/xmp/extension/\0"
MAX_SEGMENT_PAYLOAD = 65533
_COM = 0xFE

# What becomes of a metadata segment: copied, replaced by lowkeyd's version, or dropped.
KEEP, EXIF, XMP, PHOTOSHOP = "keep", "exif", "xmp", "photoshop"
FATES = (KEEP, EXIF, XMP, PHOTOSHOP)
MPF_HEADER = b"MPF\0"
# The segments known by their marker and how their payload starts, with their fate; the first match counts.
_KNOWN = (
    (0xE0, b"JFXX", "the JFIF thumbnail"),
    (0xE1, EXIF_HEADER, EXIF),
    (0xE1, XMP_HEADER, XMP),
    (0xE1, EXTENDED_XMP_HEADER, "extended XMP"),
    (0xE2, MPF_HEADER, "the MPF index of secondary images"),
    (0xEB, b"", "JUMBF/C2PA content credentials (APP11; they vouch for the original pixels)"),
    (0xED, PHOTOSHOP_HEADER, PHOTOSHOP),
)


def segment_fate(marker: int, payload: bytes) -> str:
    """KEEP, EXIF, XMP, PHOTOSHOP, or for a segment that is left out, why (in words, for reports)."""
    for known, prefix, fate in _KNOWN:
        if marker == known and payload.startswith(prefix):
            return fate
    if any(True for _ in embedded_jpegs(payload)):
        return f"a preview picture in an {_name(marker)} segment"
    return KEEP


def _name(marker: int) -> str:
    return "COM" if marker == _COM else f"APP{marker - 0xE0}"


def _is_metadata(marker: int, payload: bytes) -> bool:
    # Adobe's APP14 says how the scans code colour (YCbCr, CMYK or YCCK): it goes with the picture.
    adobe = marker == ADOBE and payload.startswith(b"Adobe")
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
        if fate == KEEP:
            out.append(segment(marker, payload))
        elif fate in FATES and fate not in written:  # only the first EXIF/XMP/Photoshop segment is the real one
            written.add(fate)
            out.extend(_replaced(marker, fate, exif=exif, xmp=xmp, photoshop=photoshop))
            if fate == EXIF and XMP not in written and xmp is not None:  # XMP follows EXIF, where readers expect it
                written.add(XMP)
                out.append(segment(0xE1, XMP_HEADER + xmp))
    if XMP not in written and xmp is not None:
        # No EXIF and no XMP in the source: the packet goes after the leading APP0 (JFIF), if any.
        at = 2 if len(out) > 1 and out[1][1] == 0xE0 else 1
        out.insert(at, segment(0xE1, XMP_HEADER + xmp))
    out.append(image if image is not None else image_data(source))
    return b"".join(out)


def _replaced(marker: int, fate: str, *, exif: bytes | None, xmp: bytes | None, photoshop: bytes | None) -> list[bytes]:
    """The segments that take the place of the source's EXIF, XMP or Photoshop segment; none where it goes."""
    if fate == EXIF:
        return [segment(marker, exif)] if exif else []
    if fate == PHOTOSHOP:
        return _photoshop_segments(photoshop) if photoshop else []
    return [segment(marker, XMP_HEADER + xmp)] if xmp is not None else []


def _with_adobe(source: bytes, written: bytes) -> bytes:
    """:func:`image_data` of ``written``, led by the source's Adobe segment where libjpeg wrote none.

    libjpeg writes Adobe's APP14 for CMYK and YCCK only; a YCbCr photo that had one keeps it.
    """
    def adobe(data: bytes) -> list[bytes]:
        return [p for m, p in jpeg_layout(data).segments if m == ADOBE and p.startswith(b"Adobe")]

    kept = adobe(source)
    picture = image_data(written)
    return segment(ADOBE, kept[0]) + picture if kept and not adobe(written) else picture


class JpegCodec(Codec):
    name = "JPEG"
    label = "JPEG"
    extensions = (".jpg", ".jpeg", ".jpe", ".jfif")
    aliases = ("MPO",)  # Pillow's name for a JPEG that carries MPF secondary images (depth maps, gain maps)

    def pictures(self, image: Image.Image) -> int:
        return 1  # an MPO's other frames are its secondary images, which the output drops

    def inspect(self, image: Image.Image, data: bytes, name: str, dropped: list[str]) -> Inspection:
        mpo = image.format == "MPO"
        if mpo:
            frames: int = getattr(image, "n_frames", 1)  # Pillow sets it on multi-frame formats only
            dropped.append(f"{frames - 1} MPF secondary image(s) (depth map, HDR gain map or second view)")
        try:
            layout = jpeg_layout(data)
        except ValueError:
            # Pillow decoded it; the layout only feeds the report below (the output is made from the source's segments)
            return Inspection(SourceEncoding())
        try:
            mode = jpegscans.scan_mode(data)
        except ValueError as exc:  # its scans could not be written back either
            raise PhotoError(f"{name}: {exc}") from exc
        if (lost := jpegscans.lost_in_writing(mode)) is not None:
            dropped.append(lost)
        photoshop = _photoshop_payloads(data, layout, mpo, dropped)
        encoding = SourceEncoding(photoshop=_photoshop_block(photoshop, dropped) if photoshop else None)
        trailer = data[layout.end :]
        has_video = b"ftyp" in trailer or b"MotionPhoto_Data" in trailer
        if trailer.strip(b"\x00") and not mpo and not has_video:
            dropped.append(f"{len(trailer)} bytes after the end of the image")
        return Inspection(encoding, has_video)

    def encode(self, cloaked: Cloaked) -> bytes:
        """The source file with sanitised metadata; only the blocks holding changed pixels are re-encoded."""
        photo = cloaked.photo
        if cloaked.samples is not None:  # CMYK: the inks themselves are what the blocks code
            before, after = cloaked.source_samples, cloaked.samples
        else:
            before = np.asarray(stored_image(photo, photo.rgb).convert(cloaked.image.mode))
            after = np.asarray(cloaked.image)
        written = jpegblocks.reencode(photo.source_bytes, before, after)
        picture = _with_adobe(photo.source_bytes, written) if written is not None else None
        return assemble(
            photo.source_bytes, exif=cloaked.exif, xmp=cloaked.packet, photoshop=cloaked.photoshop(), image=picture
        )


def _photoshop_payloads(data: bytes, layout: JpegLayout, mpo: bool, dropped: list[str]) -> list[bytes]:
    """The payloads of the Photoshop (APP13) segments, noting in ``dropped`` each kind of segment the output leaves out."""
    photoshop: list[bytes] = []
    for marker, payload in metadata_segments(data, layout):
        fate = segment_fate(marker, payload)
        if fate == PHOTOSHOP:
            photoshop.append(payload)
        elif fate not in FATES and not (mpo and payload.startswith(MPF_HEADER)) and fate not in dropped:
            dropped.append(fate)
    return photoshop


def _photoshop_block(payloads: list[bytes], dropped: list[str]) -> PhotoshopBlock | None:
    """The Photoshop block the APP13 payloads hold, noting what the output leaves out of it; None if unreadable."""
    # Photoshop splits a block over 64 KiB across APP13 segments, each with its own header.
    joined = payloads[0] + b"".join(p.removeprefix(PHOTOSHOP_HEADER) for p in payloads[1:])
    return read_block(PhotoshopBlock.parse, joined, "the Photoshop/IPTC block (APP13; unreadable)", dropped)


CODEC = JpegCodec()
