"""Reading a photo safely: size limits, format by content, orientation, colour modes, metadata.

Every way a file can be unreadable or unsuitable ends in a :class:`PhotoError` with a
one-line reason; nothing else escapes :func:`read_photo`.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from lowkeyd.errors import PhotoError
from lowkeyd.photo.codec import MODES, Codec, read_block
from lowkeyd.photo.exif import ExifData
from lowkeyd.photo.formats import OPEN_FORMATS, SUPPORTED_LIST, codec_for
from lowkeyd.photo.model import Photo, SourceEncoding
from lowkeyd.photo.orientation import TO_UPRIGHT, transpose_array
from lowkeyd.photo.samples import Samples
from lowkeyd.photo.xmp import Xmp

# 120 MP admits the 108 MP sensors of current phones with room to spare; Pillow's own hard
# limit (2 x Image.MAX_IMAGE_PIXELS, about 179 MP) still applies above that.
DEFAULT_MAX_PIXELS = 120_000_000
# No photo comes near this; it stops a huge file from being read into memory.
MAX_FILE_BYTES = 1 << 30

# What Pillow and its plugins raise on malformed data, beyond their own UnidentifiedImageError.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    RuntimeError,
    struct.error,
)
# Modes whose samples the output keeps (see lowkeyd.photo.samples) instead of 8-bit pixels.
_DEEP_MODES = {"CMYK", "I;16"}


def read_photo(
    source: Path | str | bytes, *, max_pixels: int | None = None, follow_symlinks: bool = True
) -> Photo:
    """Decode a photo file (or its bytes) into upright 8-bit pixels plus what writing it back needs.

    A path must carry an extension of the format its content has (content is sniffed; a PNG
    named .jpg is refused rather than published under a misleading name). ``max_pixels``
    (default :data:`DEFAULT_MAX_PIXELS`) refuses decompression bombs and huge images before
    any pixel is decoded. Only a regular file is read (never a FIFO or a device), and with
    ``follow_symlinks`` False a path that is itself a symbolic link is refused.
    """
    path, data, source_stat = _read_source(source, follow_symlinks=follow_symlinks)
    name = str(path) if path else "<input>"
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    with warnings.catch_warnings():
        # Over Image.MAX_IMAGE_PIXELS Pillow only warns: lowkeyd's own limit decides. Pillow's
        # other warnings are about damaged metadata, which is repaired or dropped and reported.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        try:
            image = Image.open(io.BytesIO(data), formats=OPEN_FORMATS)
        except Image.DecompressionBombError as exc:
            raise PhotoError(f"{name}: refused as a possible decompression bomb ({exc})") from exc
        except _DECODE_ERRORS as exc:
            kind = "a GIF, which lowkeyd does not cloak" if data[:4] == b"GIF8" else "not a readable image"
            raise PhotoError(f"{name}: {kind} (lowkeyd reads {SUPPORTED_LIST})") from exc
        with image:
            try:
                return _decode(image, data, path, name, source_stat, limit)
            except _DECODE_ERRORS + (cv2.error,) as exc:
                # Whatever a damaged file trips in the metadata and container readers is the photo's own error.
                raise PhotoError(f"{name}: truncated or corrupt ({exc})") from exc


def header_pixels(data: bytes) -> int | None:
    """Width times height, from a photo's header (all of it, or its start), nothing decoded; None if it does not say."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with Image.open(io.BytesIO(data), formats=OPEN_FORMATS) as image:
                return image.size[0] * image.size[1]
        except (Image.DecompressionBombError, *_DECODE_ERRORS):
            return None


def _read_source(
    source: Path | str | bytes, *, follow_symlinks: bool = True
) -> tuple[Path | None, bytes, os.stat_result | None]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise PhotoError("<input>: empty (0 bytes)")
        return None, data, None
    path = Path(source)
    if path.is_dir():
        raise PhotoError(f"{path}: is a folder, not a photo")
    # O_NONBLOCK: opening a FIFO (or a link to one) must not wait for a writer; it is refused below.
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise PhotoError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        source_stat = os.fstat(fd)
        if not stat.S_ISREG(source_stat.st_mode):
            raise PhotoError(f"{path}: not a regular file")
        if source_stat.st_size == 0:
            raise PhotoError(f"{path}: empty file (0 bytes)")
        if source_stat.st_size > MAX_FILE_BYTES:
            raise PhotoError(f"{path}: {source_stat.st_size >> 20} MiB is too large for a photo")
        # Never more than fstat said: a file that keeps growing is not read without end.
        with os.fdopen(os.dup(fd), "rb") as file:
            data = file.read(source_stat.st_size)
        return path, data, source_stat
    except OSError as exc:
        raise PhotoError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    finally:
        os.close(fd)


def _decode(
    image: Image.Image, data: bytes, path: Path | None, name: str, source_stat: os.stat_result | None, limit: int
) -> Photo:
    codec = codec_for(str(image.format))
    _check_name(codec, path, name)
    width, height = image.size
    if width * height > limit:
        raise PhotoError(
            f"{name}: {width}x{height} is {width * height / 1e6:.1f} megapixels,"
            f" over the limit of {limit / 1e6:g} (a decompression bomb or not a photo)"
        )
    if (reason := codec.refusal(image)) is not None:
        raise PhotoError(f"{name}: {reason}")
    dropped: list[str] = []
    inspection = codec.inspect(image, data, name, dropped)
    orientation = _orientation(image)
    try:
        rgb, alpha, grayscale, samples = _pixels(codec, image, data, orientation, dropped)
    except _DECODE_ERRORS + (cv2.error,) as exc:
        raise PhotoError(f"{name}: truncated or corrupt {codec.label} ({exc})") from exc

    exif = _read_exif(image.info.get("exif"), dropped)
    kept_orientation = codec.kept_orientation(orientation, exif, dropped)
    xmp, marker, video_in_xmp = _read_xmp(image.info.get("xmp"), dropped)
    has_video = inspection.has_video or video_in_xmp
    if has_video:
        dropped.append("the attached motion video")
    if kept_orientation == 1 and xmp is not None and xmp.copy().make_upright():
        dropped.append("the XMP orientation (the pixels are written upright instead)")
    return Photo(
        rgb=rgb,
        alpha=alpha,
        format=codec.name,
        source_path=path,
        grayscale=grayscale,
        orientation=kept_orientation,
        exif=exif,
        icc_profile=image.info.get("icc_profile") or None,
        xmp=xmp,
        encoding=inspection.encoding,
        cloak_marker=marker,
        has_motion_video=has_video,
        dropped=tuple(dropped),
        has_location=_has_location(exif, xmp, inspection.encoding),
        samples=samples,
        source_stat=source_stat,
        source_bytes=data,
    )


def _check_name(codec: Codec, path: Path | None, name: str) -> None:
    """PhotoError unless the file's extension is one of its format's."""
    if path is not None and path.suffix.lower() not in codec.extensions:
        shown = f"named {path.suffix}" if path.suffix else "without an extension"
        raise PhotoError(f"{name}: a {codec.label} image {shown}; rename it to {codec.extensions[0]} first")


def _has_location(exif: ExifData | None, xmp: Xmp | None, encoding: SourceEncoding) -> bool:
    """Whether the source says where it was taken: GPS in EXIF, XMP or a TIFF's IFDs, or IPTC location fields."""
    return bool(
        (exif is not None and exif.has_gps)
        or encoding.tiff_gps
        or (xmp is not None and xmp.copy().remove_gps())
        or (encoding.photoshop is not None and encoding.photoshop.has_location)
    )


def _pixels(
    codec: Codec, image: Image.Image, data: bytes, orientation: int, dropped: list[str]
) -> tuple[np.ndarray, np.ndarray | None, bool, Samples | None]:
    """(upright 8-bit RGB, alpha, grayscale, the source's own samples where the output keeps them)."""
    upright = TO_UPRIGHT.get(orientation)
    deep = codec.samples(image, data)
    if deep is not None:
        samples = Samples(transpose_array(deep[0], upright), deep[1])
        view = samples.to_8bit()
        rgb = np.repeat(view[..., :1], 3, axis=2) if samples.colours == 1 else view[..., :3]
        alpha = view[..., samples.colours] if view.shape[2] > samples.colours else None
        return np.ascontiguousarray(rgb), alpha, samples.colours == 1, samples
    if image.mode in _DEEP_MODES:
        return _deep_mode_pixels(image, upright)
    return _pillow_pixels(image, upright, dropped)


def _deep_mode_pixels(image: Image.Image, upright: Image.Transpose | None) -> tuple[np.ndarray, None, bool, Samples]:
    """A CMYK or 16-bit grayscale image Pillow decoded: its samples kept, their 8-bit view cloaked."""
    stored = image if upright is None else image.transpose(upright)
    array = np.array(stored)
    samples = Samples(array[..., None] if array.ndim == 2 else array, 16 if image.mode == "I;16" else 8, image.mode == "CMYK")
    eight = Image.fromarray(samples.to_8bit()[..., 0]) if image.mode == "I;16" else stored.convert("RGB")
    return np.array(eight.convert("RGB")), None, MODES[image.mode][0], samples


def _pillow_pixels(image: Image.Image, upright: Image.Transpose | None, dropped: list[str]) -> tuple[np.ndarray, np.ndarray | None, bool, None]:
    """The 8-bit pixels Pillow decoded, converted only as far as lowkeyd needs them."""
    grayscale, has_alpha = MODES[image.mode]
    if image.mode == "P":
        has_alpha = "transparency" in image.info
        dropped.append("the colour palette (written as full colour)")
    # Each conversion is a full copy of the pixels (gigabytes at 100 MP): only those needed are made.
    mode = ("L" if grayscale else "RGB") + ("A" if has_alpha else "")
    converted = image if image.mode == mode else image.convert(mode)
    if upright is not None:  # FLIP_LEFT_RIGHT is 0
        converted = converted.transpose(upright)
    # asarray: a read-only view of the pixel bytes rather than one more copy of them.
    rgb = np.asarray(converted if converted.mode == "RGB" else converted.convert("RGB"))
    return rgb, np.asarray(converted.getchannel("A")) if has_alpha else None, grayscale, None


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation viewers apply; HEIF's own rotation is already applied by libheif."""
    try:
        value = image.getexif().get(0x0112, 1)
    except _DECODE_ERRORS:
        return 1
    return value if value in TO_UPRIGHT or value == 1 else 1


def _read_exif(raw: bytes | None, dropped: list[str]) -> ExifData | None:
    return read_block(ExifData.parse, raw, "the EXIF block (unreadable)", dropped) if raw else None


def _read_xmp(raw: bytes | str | None, dropped: list[str]) -> tuple[Xmp | None, dict[str, str] | None, bool]:
    """(cleaned XMP, lowkeyd's marker, whether it announced a motion video)."""
    if not raw:
        return None, None, False
    try:
        xmp = Xmp.parse(raw.encode("utf-8") if isinstance(raw, str) else raw)
    except ValueError:
        dropped.append("the XMP packet (not well-formed)")
        return None, None, False
    people = xmp.remove_people()
    media = xmp.remove_embedded_media()
    if people or media:
        dropped.append("XMP " + ", ".join(people + media))
    video = any(label.endswith((":MotionPhoto", ":MicroVideo")) for label in media)
    return xmp, xmp.marker, video
