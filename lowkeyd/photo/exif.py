"""EXIF through libexiv2: every tag kept as the camera wrote it, only what leaks removed.

libexiv2 (the ``exiv2`` binding bundles it) reads and rewrites the whole TIFF structure,
unknown tags, MakerNotes (their internal offsets relocated) and the byte order included,
which a tag-table library such as piexif cannot. lowkeyd asks it for three edits only:

* GPS goes when stripping;
* the thumbnail (IFD1) is rebuilt from the output's pixels where they changed: it shows the
  original. The new one is written over the old one where it fits, so that nothing else moves:
  a MakerNote whose offsets count from the TIFF header comes through byte for byte. Where no pixel changed it is kept byte for byte (a rewrite would only make the file
  larger and set it apart), unless it no longer shows the picture: an edited photo's thumbnail
  can show what was cropped away;
* preview images a camera hid in its MakerNote or elsewhere are blanked in place (same length,
  so every offset stays valid), and IFD0's XMLPacket, an XMP copy lowkeyd does not clean, goes.
"""

from __future__ import annotations

import functools
import io
import struct
from dataclasses import dataclass, field

import exiv2
import numpy as np
from PIL import Image, ImageOps

from lowkeyd.photo.containers import embedded_jpegs, jpeg_layout

# libexiv2 prints its warnings on stderr; lowkeyd reports what matters in its own words.
exiv2.LogMsg.setLevel(exiv2.LogMsg.Level.mute)

EXIF_HEADER = b"Exif\0\0"
# A JPEG APP1 segment holds at most this many bytes, "Exif\0\0" header included.
MAX_JPEG_EXIF_BYTES = 65533
_THUMBNAIL_GROUP = "Thumbnail"
_XML_PACKET = "Exif.Image.XMLPacket"
_GPS_POINTER = "Exif.Image.GPSTag"
# IFD1's JPEGInterchangeFormat and JPEGInterchangeFormatLength: where the thumbnail lies.
_THUMBNAIL_START, _THUMBNAIL_LENGTH = 0x0201, 0x0202
ORIENTATION = "Exif.Image.Orientation"
# Mean difference (of 255), at a quarter of the thumbnail's size, above which a thumbnail no longer
# shows its picture. A camera's own stays under 5 on the test photos; cropping 10% off or mirroring
# the picture gives 10 to 40.
_STALE_THUMBNAIL = 6.0


@dataclass
class ExifData:
    """An EXIF block as read from the source (TIFF bytes, no "Exif\\0\\0" header) and what reading it found."""

    tiff: bytes
    thumbnail_size: tuple[int, int] | None  # the original thumbnail's size; None: it had none
    has_gps: bool = False
    notes: list[str] = field(default_factory=list)  # what the output will not carry, in words
    keys: frozenset[str] = frozenset()  # the tags libexiv2 writes back, thumbnail's aside

    @classmethod
    def parse(cls, raw: bytes) -> ExifData:
        """Check an EXIF block (with or without its "Exif\\0\\0" header); ValueError if libexiv2 cannot read it."""
        tiff = raw.removeprefix(EXIF_HEADER)
        data = _read(tiff)
        notes: list[str] = []
        if data.findKey(exiv2.ExifKey(_XML_PACKET)) != data.end():
            notes.append("the XMP copy inside EXIF (IFD0 XMLPacket)")
        notes.extend(leaks(data))
        # libexiv2 leaves out what it cannot parse (a corrupt MakerNote): say so rather than lose it silently.
        try:
            rewritten = _rewrite(tiff, strip_gps=False, thumbnail=None)
        except exiv2.Exiv2Error as exc:
            raise ValueError(f"EXIF cannot be rewritten: {exc}") from exc
        kept = _keys(rewritten)
        lost = sorted({_label(d) for d in data if d.key() not in kept and d.groupName() != _THUMBNAIL_GROUP} - {"XMLPacket"})
        if lost:
            notes.append(f"EXIF {', '.join(lost)} (libexiv2 cannot write it back)")
        has_gps = any(datum.groupName() == "GPSInfo" for datum in data)
        return cls(tiff, _thumbnail_size(data), has_gps, notes, frozenset(kept))

    def has(self, key: str) -> bool:
        """Whether the block has the tag ``key`` (a libexiv2 key) that the output would carry."""
        return key in self.keys

    def thumbnail(self) -> bytes:
        """The source's own thumbnail as stored (empty where it has none)."""
        data = _read(self.tiff)
        return bytes(exiv2.ExifThumbC(data).copy().data())

    def dump(
        self,
        *,
        strip_gps: bool,
        thumbnail_of: Image.Image | None,
        keep_thumbnail: bool = False,
        max_bytes: int = MAX_JPEG_EXIF_BYTES,
        without: frozenset[str] = frozenset(),
    ) -> bytes | None:
        """The output's EXIF, "Exif\\0\\0" header included; None when nothing of it is left to keep.

        A thumbnail is rebuilt from ``thumbnail_of`` (the output's stored pixels) when the
        source had one, at a lower JPEG quality or not at all where that is what fits ``max_bytes``.
        ``keep_thumbnail`` (the pixels are the source's) keeps the source's own instead, where it
        shows ``thumbnail_of``. ``without`` names tags (libexiv2 keys) the output leaves out.
        """
        wanted = set(self.keys) - without - (_gps_keys(self.keys) if strip_gps else set())
        rebuild_thumbnail = bool(self.thumbnail_size and thumbnail_of)
        if not wanted and not rebuild_thumbnail:
            return None  # e.g. EXIF that held nothing but the GPS position being stripped

        def fitting(thumbnail: bytes | None, *, keep: bool = False) -> bytes | None:
            try:
                out = _rewrite(
                    self.tiff, strip_gps=strip_gps, thumbnail=thumbnail,
                    erase_thumbnail=bool(self.thumbnail_size) and not keep, erase=without,
                )
            except (exiv2.Exiv2Error, ValueError):
                return None  # too large for one segment
            # Over 64 KiB libexiv2 quietly leaves out the MakerNote: a smaller thumbnail is better.
            return out if len(out) <= max_bytes and wanted <= _keys(out) else None

        if rebuild_thumbnail and (kept := fitting(None, keep=True)) is not None:
            assert thumbnail_of is not None
            patched = self._thumbnail_in_place(kept, thumbnail_of, keep=keep_thumbnail)
            if patched is not None:
                return patched
        # No room in the old one's place: libexiv2 lays the block out anew around the new thumbnail.
        qualities: tuple[int | None, ...] = (90, 75, 50, None) if rebuild_thumbnail else (None,)
        for fallback in qualities:
            out = fitting(_jpeg_thumbnail(thumbnail_of, self.thumbnail_size, fallback) if fallback else None)
            if out is not None:
                return out
        raise ValueError("the EXIF block does not fit in one JPEG segment")

    def _thumbnail_in_place(self, kept: bytes, thumbnail_of: Image.Image, *, keep: bool) -> bytes | None:
        """``kept`` (the output's block with the source's thumbnail) with a thumbnail of ``thumbnail_of`` in its place.

        With ``keep`` the source's own stays where it shows ``thumbnail_of``. None where no new one fits the old one's place.
        """
        assert self.thumbnail_size is not None  # only asked of a block that has a thumbnail
        if keep and _shows(self.thumbnail(), thumbnail_of):
            return kept
        for quality in (90, 75, 50):
            patched = _replace_thumbnail(kept, _jpeg_thumbnail(thumbnail_of, self.thumbnail_size, quality))
            if patched is not None:
                return patched
        return None


def _read(tiff: bytes) -> exiv2.ExifData:
    if tiff[:4] not in (b"II*\0", b"MM\0*"):
        raise ValueError("EXIF has no TIFF header")
    try:
        image = exiv2.ImageFactory.open(_carrier(EXIF_HEADER + tiff))
        image.readMetadata()
    except exiv2.Exiv2Error as exc:
        raise ValueError(f"EXIF is unreadable: {exc}") from exc
    return image.exifData()


def _gps_keys(keys: frozenset[str]) -> set[str]:
    """The GPS tags among ``keys``, with the pointer to their IFD."""
    return {k for k in keys if k.startswith("Exif.GPSInfo.") or k == _GPS_POINTER}


def _keys(exif: bytes) -> set[str]:
    """The tags of an EXIF block, "Exif\\0\\0" header included, other than the thumbnail's."""
    return {d.key() for d in _read(exif[len(EXIF_HEADER) :]) if d.groupName() != _THUMBNAIL_GROUP}


def _label(datum: exiv2.Exifdatum) -> str:
    """A lost tag's name for a report: a MakerNote's sub-tags are all "MakerNote"."""
    if datum.familyName() == "Exif" and datum.ifdName() not in ("IFD0", "Exif", "GPSInfo", "Iop", "IFD1"):
        return "MakerNote"
    return datum.tagName()


def _rewrite(
    tiff: bytes, *, strip_gps: bool, thumbnail: bytes | None, erase_thumbnail: bool = True, erase: frozenset[str] = frozenset()
) -> bytes:
    """The EXIF block rewritten by libexiv2 with ``thumbnail`` (or none, where ``erase_thumbnail``)."""
    try:
        image = exiv2.ImageFactory.open(_carrier(EXIF_HEADER + tiff))
        image.readMetadata()
    except exiv2.Exiv2Error as exc:
        raise ValueError(f"EXIF is unreadable: {exc}") from exc
    data = image.exifData()
    sanitise(data, strip_gps=strip_gps)
    for key in erase:
        position = data.findKey(exiv2.ExifKey(key))
        if position != data.end():
            data.erase(position)
    if thumbnail is not None:
        exiv2.ExifThumb(data).setJpegThumbnail(thumbnail)
    elif erase_thumbnail:
        exiv2.ExifThumb(data).erase()
    image.writeMetadata()
    written = bytes(image.io().mmap())
    for marker, payload in jpeg_layout(written).segments:
        if marker == 0xE1 and payload.startswith(EXIF_HEADER):
            return payload
    raise ValueError("libexiv2 wrote no EXIF")


def leaks(data: exiv2.ExifData) -> list[str]:
    """What :func:`sanitise` will blank in ``data``, in words (IFD0's XMLPacket aside)."""
    previews = sum(1 for datum in data if _hides_picture(datum))
    return [f"{previews} preview image(s) inside the EXIF MakerNote (blanked)"] if previews else []


def sanitise(data: exiv2.ExifData, *, strip_gps: bool) -> None:
    """Edit libexiv2's EXIF in place: GPS out when stripping, IFD0's XMLPacket out, hidden previews blanked."""
    doomed = [
        datum.key()
        for datum in data
        if datum.key() == _XML_PACKET
        or (strip_gps and (datum.groupName() == "GPSInfo" or datum.key() == _GPS_POINTER))
    ]
    for key in doomed:
        data.erase(data.findKey(exiv2.ExifKey(key)))
    for datum in data:
        if _hides_picture(datum):
            _blank(datum)


@functools.cache
def _carrier_image() -> bytes:
    """A tiny JPEG whose only job is to hold an EXIF block while libexiv2 edits it."""
    out = io.BytesIO()
    Image.new("L", (8, 8)).save(out, format="JPEG")
    return out.getvalue()


def _carrier(exif: bytes) -> bytes:
    image = _carrier_image()
    segment = b"\xff\xe1" + (len(exif) + 2).to_bytes(2, "big") + exif
    return image[:2] + segment + image[2:]


def _hides_picture(datum: exiv2.Exifdatum) -> bool:
    """True for a tag other than the thumbnail's that holds or points at a JPEG picture."""
    if datum.groupName() == _THUMBNAIL_GROUP:
        return False
    if datum.sizeDataArea():
        return any(bytes(datum.dataArea().data()))  # blanked already: all zeros
    if datum.typeId() not in (exiv2.TypeId.undefined, exiv2.TypeId.unsignedByte) or datum.size() < 128:
        return False
    return any(True for _ in embedded_jpegs(bytes(datum.value().data())))


def _blank(datum: exiv2.Exifdatum) -> None:
    """Zero the picture's bytes, keeping the value's length so no offset moves."""
    if datum.sizeDataArea():
        datum.setDataArea(bytes(datum.sizeDataArea()))
        return
    value = bytearray(datum.value().data())
    for start, end in embedded_jpegs(bytes(value)):
        value[start:end] = bytes(end - start)
    datum.setValue(exiv2.DataValue(bytes(value), exiv2.ByteOrder.invalidByteOrder, datum.typeId()))


def _thumbnail_size(data: exiv2.ExifData) -> tuple[int, int] | None:
    thumbnail = bytes(exiv2.ExifThumbC(data).copy().data())
    if not thumbnail:
        return None
    try:
        with Image.open(io.BytesIO(thumbnail), formats=("JPEG",)) as im:
            return im.size
    except (OSError, SyntaxError, ValueError):
        return (160, 120)  # an unreadable thumbnail is rebuilt at the usual EXIF size


def _replace_thumbnail(exif: bytes, thumbnail: bytes) -> bytes | None:
    """``exif`` ("Exif\\0\\0" header included) with ``thumbnail`` written over IFD1's own, every other byte where
    it was; None where IFD1 has no thumbnail that much room."""
    tiff = bytearray(exif[len(EXIF_HEADER) :])
    order = {b"II": "<", b"MM": ">"}.get(bytes(tiff[:2]))
    if order is None:
        return None
    fields: dict[int, tuple[int, str]] = {}  # tag -> (where its value lies, its struct format)
    try:
        (ifd0,) = struct.unpack_from(order + "I", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, ifd0)
        (ifd1,) = struct.unpack_from(order + "I", tiff, ifd0 + 2 + 12 * count)
        (count,) = struct.unpack_from(order + "H", tiff, ifd1) if ifd1 else (0,)
        for entry in range(ifd1 + 2, ifd1 + 2 + 12 * count, 12):
            tag, kind, n = struct.unpack_from(order + "HHI", tiff, entry)
            if tag in (_THUMBNAIL_START, _THUMBNAIL_LENGTH) and n == 1 and kind in (3, 4):  # SHORT or LONG
                fields[tag] = (entry + 8, order + ("H" if kind == 3 else "I"))
        (start,) = struct.unpack_from(fields[_THUMBNAIL_START][1], tiff, fields[_THUMBNAIL_START][0])
        (length,) = struct.unpack_from(fields[_THUMBNAIL_LENGTH][1], tiff, fields[_THUMBNAIL_LENGTH][0])
    except (struct.error, KeyError):
        return None
    if len(thumbnail) > length or start + length > len(tiff):
        return None
    tiff[start : start + length] = thumbnail + bytes(length - len(thumbnail))
    struct.pack_into(fields[_THUMBNAIL_LENGTH][1], tiff, fields[_THUMBNAIL_LENGTH][0], len(thumbnail))
    return EXIF_HEADER + bytes(tiff)


def _shows(thumbnail: bytes, image: Image.Image) -> bool:
    """Whether ``thumbnail`` can stay beside ``image``: a picture of it (bars around it aside), not one stale
    from an edit, or no picture at all (ExifTool's sample files hold the text "<Dummy thumbnail>")."""
    try:
        with Image.open(io.BytesIO(thumbnail), formats=("JPEG", "TIFF")) as im:
            thumb = im.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return b"\xff\xd8" not in thumbnail  # a damaged JPEG may still show something in a lenient viewer
    fit = ImageOps.contain(image.convert("RGB"), thumb.size, Image.Resampling.BOX)
    left, top = (thumb.width - fit.width) // 2, (thumb.height - fit.height) // 2
    # A quarter of the size: the thumbnail's JPEG noise and a camera's sharpening average out, an edit does not.
    small = (max(1, fit.width // 4), max(1, fit.height // 4))
    shown = thumb.crop((left, top, left + fit.width, top + fit.height)).resize(small, Image.Resampling.BOX)
    expected = fit.resize(small, Image.Resampling.BOX)
    return float(np.abs(np.asarray(shown, np.int16) - np.asarray(expected, np.int16)).mean()) <= _STALE_THUMBNAIL


def _jpeg_thumbnail(image: Image.Image | None, size: tuple[int, int] | None, quality: int) -> bytes:
    assert image is not None and size is not None
    thumb = image.convert("L" if image.mode in ("L", "LA") else "RGB")
    thumb.thumbnail(size)
    out = io.BytesIO()
    thumb.save(out, format="JPEG", quality=quality)
    return out.getvalue()

