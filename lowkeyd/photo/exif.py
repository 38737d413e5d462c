"""EXIF: read with piexif, repair or drop out-of-spec tags one at a time, write back with a new thumbnail.

The original EXIF thumbnail (and any JPEG preview a camera hid in its MakerNote) shows
the original face, so it is never carried over: the thumbnail is regenerated from the
cloaked pixels and MakerNote previews are blanked in place (same length, so the
MakerNote's internal offsets stay valid and the rest of it stays byte-identical).
"""

from __future__ import annotations

import copy
import io
import struct
from dataclasses import dataclass, field
from typing import Any

import piexif
from PIL import Image

from lowkeyd.photo.containers import embedded_jpegs

_IFDS = ("0th", "Exif", "GPS", "Interop", "1st")
_UNDEFINED, _BYTE, _SHORT, _LONG, _RATIONAL = (
    piexif.TYPES.Undefined,
    piexif.TYPES.Byte,
    piexif.TYPES.Short,
    piexif.TYPES.Long,
    piexif.TYPES.Rational,
)
# Tags that locate data inside the original file (piexif writes the ones it needs afresh),
# plus IFD0's XMLPacket, a second XMP copy lowkeyd does not clean: the real XMP is kept apart.
_NOT_CARRIED = {
    "0th": {
        piexif.ImageIFD.ExifTag,
        piexif.ImageIFD.GPSTag,
        piexif.ImageIFD.JPEGInterchangeFormat,
        piexif.ImageIFD.JPEGInterchangeFormatLength,
        piexif.ImageIFD.StripOffsets,
        piexif.ImageIFD.StripByteCounts,
        piexif.ImageIFD.XMLPacket,
    },
    "Exif": {piexif.ExifIFD.InteroperabilityTag},
    "1st": {
        piexif.ImageIFD.JPEGInterchangeFormat,
        piexif.ImageIFD.JPEGInterchangeFormatLength,
        piexif.ImageIFD.StripOffsets,
        piexif.ImageIFD.StripByteCounts,
    },
}
# A JPEG APP1 segment holds at most this many bytes, "Exif\0\0" header included.
MAX_JPEG_EXIF_BYTES = 65533
_PIEXIF_MAX_THUMBNAIL = 64000  # piexif refuses larger thumbnails
_DUMP_ERRORS = (ValueError, TypeError, KeyError, OverflowError, struct.error)
_LOAD_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError, struct.error)


@dataclass
class ExifData:
    """A parsed EXIF block that piexif can write back, without its thumbnail."""

    ifds: dict[str, dict[int, Any]]
    thumbnail_size: tuple[int, int] | None  # the original thumbnail's size; None: it had none
    notes: list[str] = field(default_factory=list)  # what reading it repaired or dropped, in words

    @classmethod
    def parse(cls, raw: bytes) -> ExifData:
        """Parse an EXIF block (with or without its "Exif\\0\\0" header); ValueError if unreadable."""
        try:
            _check_counts(raw[6:] if raw.startswith(b"Exif\0\0") else raw)
            loaded = piexif.load(raw)
        except _LOAD_ERRORS as exc:
            raise ValueError(f"EXIF is unreadable: {exc}") from exc
        thumbnail = loaded.pop("thumbnail")
        ifds = {name: dict(loaded.get(name) or {}) for name in _IFDS}
        notes: list[str] = []
        for name in _IFDS:
            for tag in list(ifds[name]):
                if tag in _NOT_CARRIED.get(name, ()):
                    if tag == piexif.ImageIFD.XMLPacket:
                        notes.append("the XMP copy inside EXIF (IFD0 XMLPacket)")
                    del ifds[name][tag]
                    continue
                repaired = _writable(name, tag, ifds[name][tag])
                label = f"EXIF {_tag_name(name, tag)}"
                if repaired is None:
                    del ifds[name][tag]
                    notes.append(f"{label} (out of spec, dropped)")
                elif repaired is not ifds[name][tag]:
                    ifds[name][tag] = repaired
                    notes.append(f"{label} (out of spec, repaired)")
        maker_note = ifds["Exif"].get(piexif.ExifIFD.MakerNote)
        if isinstance(maker_note, bytes):
            scrubbed, count = _blank_embedded_jpegs(maker_note)
            if count:
                ifds["Exif"][piexif.ExifIFD.MakerNote] = scrubbed
                notes.append(f"{count} preview image(s) inside the MakerNote (blanked)")
        return cls(ifds, _thumbnail_size(thumbnail), notes)

    def dump(
        self,
        *,
        orientation: int,
        strip_gps: bool,
        thumbnail_of: Image.Image | None,
        max_bytes: int = MAX_JPEG_EXIF_BYTES,
    ) -> bytes:
        """EXIF bytes for the output, "Exif\\0\\0" header included.

        ``orientation`` is written when the source had the tag or it is not 1; the thumbnail is
        regenerated from ``thumbnail_of`` (the output's stored pixels) when the source had one,
        at a lower JPEG quality or not at all where that is what fits ``max_bytes``.
        """
        ifds = copy.deepcopy(self.ifds)
        if piexif.ImageIFD.Orientation in ifds["0th"] or orientation != 1:
            ifds["0th"][piexif.ImageIFD.Orientation] = orientation
        if strip_gps:
            ifds["GPS"] = {}
        without = {**ifds, "thumbnail": None}
        if self.thumbnail_size is None or thumbnail_of is None:
            return piexif.dump(without)
        for quality in (90, 75, 50):
            thumbnail = _jpeg_thumbnail(thumbnail_of, self.thumbnail_size, quality)
            if len(thumbnail) > _PIEXIF_MAX_THUMBNAIL:
                continue
            candidate = piexif.dump({**ifds, "thumbnail": thumbnail})
            if len(candidate) <= max_bytes:
                return candidate
        return piexif.dump(without)


# Bytes per value of each TIFF field type.
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}
_IFD_POINTERS = {piexif.ImageIFD.ExifTag, piexif.ImageIFD.GPSTag, piexif.ExifIFD.InteroperabilityTag}


def _check_counts(tiff: bytes) -> None:
    """ValueError if a tag claims more data than the block holds.

    piexif sizes its work by the claimed count alone, so one corrupt count makes it build a
    format string of up to 4 G characters; this walk checks counts before piexif reads anything.
    """
    if tiff[:4] not in (b"II*\0", b"MM\0*"):
        raise ValueError("EXIF has no TIFF header")
    order = "<" if tiff[:2] == b"II" else ">"
    (ifd0,) = struct.unpack_from(order + "L", tiff, 4)
    pending, seen = [ifd0], set()
    while pending:
        offset = pending.pop()
        if offset == 0 or offset in seen:
            continue
        seen.add(offset)
        (count,) = struct.unpack_from(order + "H", tiff, offset)
        for entry in range(offset + 2, offset + 2 + 12 * count, 12):
            tag, kind, n = struct.unpack_from(order + "HHL", tiff, entry)
            if n * _TYPE_SIZES.get(kind, 1) > len(tiff):
                raise ValueError(f"EXIF tag {tag:#06x} claims {n} values in a {len(tiff)}-byte block")
            if tag in _IFD_POINTERS:  # read the pointer the way piexif will, SHORT or LONG
                pending.append(struct.unpack_from(order + ("H" if kind == 3 else "L"), tiff, entry + 8)[0])
        if offset == ifd0:  # IFD0's link to the next IFD leads to IFD1, the thumbnail's
            pending.append(struct.unpack_from(order + "L", tiff, offset + 2 + 12 * count)[0])


def _tag_name(ifd: str, tag: int) -> str:
    return piexif.TAGS[ifd].get(tag, {}).get("name", f"tag {tag:#06x}")


def _dumps(ifd: str, tag: int, value: Any) -> bool:
    # piexif only writes IFD1 when a thumbnail is given; IFD0 uses the same tag table.
    name = "0th" if ifd == "1st" else ifd
    try:
        piexif.dump({"Exif": {}, name: {tag: value}})
    except _DUMP_ERRORS:
        return False
    return True


def _writable(ifd: str, tag: int, value: Any) -> Any | None:
    """``value`` itself if piexif can write it, else a repaired value, else None."""
    if _dumps(ifd, tag, value):
        return value
    expected = piexif.TAGS[ifd][tag]["type"]
    for candidate in _repairs(value, expected):
        if _dumps(ifd, tag, candidate):
            return candidate
    return None


def _repairs(value: Any, expected: int) -> list[Any]:
    """Conversions for the type mix-ups phones write, e.g. SceneType stored as SHORT instead of UNDEFINED."""
    ints = (value,) if isinstance(value, int) else value
    is_ints = isinstance(ints, tuple) and all(isinstance(v, int) for v in ints)
    if expected == _UNDEFINED and is_ints and all(0 <= v < 256 for v in ints):
        return [bytes(ints)]
    if expected in (_BYTE, _SHORT, _LONG) and isinstance(value, bytes):
        return [tuple(value)]
    if expected == _RATIONAL and isinstance(value, int):
        return [(value, 1)]
    return []


def _blank_embedded_jpegs(blob: bytes) -> tuple[bytes, int]:
    out = bytearray(blob)
    count = 0
    for start, end in embedded_jpegs(blob):
        out[start:end] = bytes(end - start)
        count += 1
    return bytes(out), count


def _thumbnail_size(thumbnail: bytes | None) -> tuple[int, int] | None:
    if not thumbnail:
        return None
    try:
        with Image.open(io.BytesIO(thumbnail), formats=("JPEG",)) as im:
            return im.size
    except (OSError, SyntaxError, ValueError):
        return None  # an unreadable thumbnail is simply not regenerated


def _jpeg_thumbnail(image: Image.Image, size: tuple[int, int], quality: int) -> bytes:
    thumb = image.convert("L" if image.mode in ("L", "LA") else "RGB")
    thumb.thumbnail(size)
    out = io.BytesIO()
    thumb.save(out, format="JPEG", quality=quality)
    return out.getvalue()
