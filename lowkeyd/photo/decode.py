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
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pillow_heif
from PIL import Image

from lowkeyd.errors import PhotoError
from lowkeyd.photo import avif, containers, jpeg, jpegscans, tiff
from lowkeyd.photo.exif import ORIENTATION, ExifData
from lowkeyd.photo.formats import EXTENSIONS, LABELS, SUPPORTED_LIST
from lowkeyd.photo.iptc import PHOTOSHOP_HEADER, PhotoshopBlock
from lowkeyd.photo.model import Photo, SourceEncoding
from lowkeyd.photo.orientation import TO_UPRIGHT, transpose_array
from lowkeyd.photo.samples import Samples
from lowkeyd.photo.xmp import Xmp

pillow_heif.register_heif_opener()

# 120 MP admits the 108 MP sensors of current phones with room to spare; Pillow's own hard
# limit (2 x Image.MAX_IMAGE_PIXELS, about 179 MP) still applies above that.
DEFAULT_MAX_PIXELS = 120_000_000
# No photo comes near this; it stops a huge file from being read into memory.
MAX_FILE_BYTES = 1 << 30

# Pillow's JPEG opener returns format "MPO" for a JPEG that carries MPF secondary images (depth
# maps, gain maps). HEIF is tried before AVIF: both plugins accept the generic "mif1" brand.
_OPEN_FORMATS = ("JPEG", "PNG", "WEBP", "HEIF", "AVIF", "TIFF")
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
# Colour modes, as Pillow decodes them, lowkeyd can cloak: mode -> (grayscale, has alpha).
_MODES = {
    "RGB": (False, False),
    "RGBA": (False, True),
    "L": (True, False),
    "LA": (True, True),
    "1": (True, False),
    "P": (False, False),
    "PA": (False, True),
    "CMYK": (False, False),
    "I;16": (True, False),
}
# Modes whose samples the output keeps (see lowkeyd.photo.samples) instead of 8-bit pixels.
_DEEP_MODES = {"CMYK", "I;16"}
# Secondary HEIF items pillow-heif reports; lowkeyd writes the primary image only.
_HEIF_EXTRAS = {"thumbnails": "thumbnails", "depth_images": "depth maps", "aux": "auxiliary images (mattes, gain maps)"}
# Lossy formats written at the source's size (lowkeyd.photo.sizing).
_SIZE_MATCHED = {"WEBP", "HEIF", "AVIF"}
_PNG_COPIED = {b"gAMA", b"cHRM", b"sRGB", b"cICP", b"mDCV", b"cLLI", b"pHYs", b"tIME", b"tEXt", b"zTXt", b"iTXt"}


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
            image = Image.open(io.BytesIO(data), formats=_OPEN_FORMATS)
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
            with Image.open(io.BytesIO(data), formats=_OPEN_FORMATS) as image:
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
    fmt = "JPEG" if image.format == "MPO" else str(image.format)
    label = LABELS[fmt]
    if path is not None and path.suffix.lower() not in EXTENSIONS[fmt]:
        shown = f"named {path.suffix}" if path.suffix else "without an extension"
        raise PhotoError(f"{name}: a {label} image {shown}; rename it to {EXTENSIONS[fmt][0]} first")
    width, height = image.size
    if width * height > limit:
        raise PhotoError(
            f"{name}: {width}x{height} is {width * height / 1e6:.1f} megapixels,"
            f" over the limit of {limit / 1e6:g} (a decompression bomb or not a photo)"
        )
    # A TIFF's pages are counted by tifffile below (Pillow's count can fail on a damaged later page).
    frames = 1 if fmt == "TIFF" else getattr(image, "n_frames", 1)
    if frames > 1 and fmt != "JPEG":  # an MPO's frames are the secondary images it drops
        what = f"holds {frames} images (a burst or collection)" if fmt == "HEIF" else f"is animated ({frames} frames)"
        raise PhotoError(f"{name}: the {label} {what}; lowkeyd cloaks still photos only")
    dropped: list[str] = []
    has_video, encoding = _inspect_container(fmt, image, data, name, dropped)
    if fmt in _SIZE_MATCHED:
        metadata = sum(len(image.info.get(key) or b"") for key in ("exif", "xmp", "icc_profile"))
        encoding = replace(encoding, image_bytes=len(data) - metadata)
    if fmt != "TIFF" and image.mode not in _MODES:  # TIFF samples are read by tifffile, and judged there
        raise PhotoError(f"{name}: {_mode_reason(image.mode)}; lowkeyd cloaks RGB, grayscale and CMYK photos")
    orientation = _orientation(image)
    try:
        if fmt != "TIFF":
            image.load()
        rgb, alpha, grayscale, samples = _pixels(image, data, fmt, orientation, dropped)
    except _DECODE_ERRORS + (cv2.error,) as exc:
        raise PhotoError(f"{name}: truncated or corrupt {label} ({exc})") from exc

    exif = _read_exif(image.info.get("exif"), dropped)
    if fmt == "AVIF" and exif is not None and exif.has(ORIENTATION):
        dropped.append("the EXIF Orientation tag (the AVIF is written upright: Pillow rewrites EXIF that has one)")
    xmp, marker, video_in_xmp = _read_xmp(image.info.get("xmp"), dropped)
    has_video = has_video or video_in_xmp
    if has_video:
        dropped.append("the attached motion video")
    has_location = bool(
        (exif is not None and exif.has_gps)
        or encoding.tiff_gps
        or (xmp is not None and xmp.copy().remove_gps())
        or (encoding.photoshop is not None and encoding.photoshop.has_location)
    )
    # Without a writable EXIF block there is no tag to keep, so the output is written upright
    # (a TIFF keeps its own Orientation tag; an AVIF is written upright, see above).
    kept_orientation = orientation if (exif is not None and fmt != "AVIF") or fmt == "TIFF" else 1
    if kept_orientation == 1 and xmp is not None and xmp.copy().make_upright():
        dropped.append("the XMP orientation (the pixels are written upright instead)")
    return Photo(
        rgb=rgb,
        alpha=alpha,
        format=fmt,
        source_path=path,
        grayscale=grayscale,
        orientation=kept_orientation,
        exif=exif,
        icc_profile=image.info.get("icc_profile") or None,
        xmp=xmp,
        encoding=encoding,
        cloak_marker=marker,
        has_motion_video=has_video,
        dropped=tuple(dropped),
        has_location=has_location,
        samples=samples,
        source_stat=source_stat,
        source_bytes=data,
    )


def _pixels(
    image: Image.Image, data: bytes, fmt: str, orientation: int, dropped: list[str]
) -> tuple[np.ndarray, np.ndarray | None, bool, Samples | None]:
    """(upright 8-bit RGB, alpha, grayscale, the source's own samples where the output keeps them)."""
    upright = TO_UPRIGHT.get(orientation)
    deep = _deep_samples(image, data, fmt)
    if deep is not None:
        samples = Samples(transpose_array(deep[0], upright), deep[1])
        view = samples.to_8bit()
        rgb = np.repeat(view[..., :1], 3, axis=2) if samples.colours == 1 else view[..., :3]
        alpha = view[..., samples.colours] if view.shape[2] > samples.colours else None
        return np.ascontiguousarray(rgb), alpha, samples.colours == 1, samples
    grayscale, has_alpha = _MODES[image.mode]
    if image.mode == "P":
        has_alpha = "transparency" in image.info
        dropped.append("the colour palette (written as full colour)")
    if image.mode in _DEEP_MODES:
        stored = image if upright is None else image.transpose(upright)
        array = np.array(stored)
        samples = Samples(array[..., None] if array.ndim == 2 else array, 16 if image.mode == "I;16" else 8, image.mode == "CMYK")
        eight = Image.fromarray(samples.to_8bit()[..., 0]) if image.mode == "I;16" else stored.convert("RGB")
        return np.array(eight.convert("RGB")), None, grayscale, samples
    # Each conversion is a full copy of the pixels (gigabytes at 100 MP): only those needed are made.
    mode = ("L" if grayscale else "RGB") + ("A" if has_alpha else "")
    converted = image if image.mode == mode else image.convert(mode)
    if upright is not None:  # FLIP_LEFT_RIGHT is 0
        converted = converted.transpose(upright)
    # asarray: a read-only view of the pixel bytes rather than one more copy of them.
    rgb = np.asarray(converted if converted.mode == "RGB" else converted.convert("RGB"))
    return rgb, np.asarray(converted.getchannel("A")) if has_alpha else None, grayscale, None


def _deep_samples(image: Image.Image, data: bytes, fmt: str) -> tuple[np.ndarray, int] | None:
    """(stored (H, W, C) samples, significant bits) of a 16-bit PNG, a 10/12-bit HEIF or AVIF, or any TIFF; else None.

    Pillow decodes these to 8 bits (or not at all), so OpenCV, pillow-heif and imagecodecs read them instead.
    A TIFF's samples are always read by tifffile, whose layout its output is written back in.
    """
    if fmt == "TIFF":
        return tiff.samples(data)
    if fmt == "PNG" and _png_bit_depth(data) == 16:
        array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if array is None:
            raise ValueError("OpenCV cannot decode it")
        if array.ndim == 2:
            return array[..., None], 16
        return cv2.cvtColor(array, cv2.COLOR_BGRA2RGBA if array.shape[2] == 4 else cv2.COLOR_BGR2RGB), 16
    if fmt == "AVIF":
        coding = avif.coding(data)
        if coding.bits <= 8 or image.mode not in ("RGB", "L"):
            return None
        return avif.samples(data), coding.bits
    bits = image.info.get("bit_depth", 8) if fmt == "HEIF" else 8
    if bits <= 8:
        return None
    heif = pillow_heif.open_heif(data, convert_hdr_to_8bit=False)
    array = np.asarray(heif)  # pillow-heif scales the samples up to 16 bits
    array = array >> (16 - bits)
    return (array[..., None] if array.ndim == 2 else array), bits


def _png_bit_depth(data: bytes) -> int:
    """Bit depth from a PNG's IHDR (signature 8, length 4, type 4, width 4, height 4, depth 1)."""
    return data[24] if len(data) > 24 and data[12:16] == b"IHDR" else 8


def _mode_reason(mode: str) -> str:
    if mode.startswith(("I", "F")):
        return f"{mode} samples are 16-bit or wider"
    return f"colour mode {mode} is not supported"


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation viewers apply; HEIF's own rotation is already applied by libheif."""
    try:
        value = image.getexif().get(0x0112, 1)
    except _DECODE_ERRORS:
        return 1
    return value if value in TO_UPRIGHT or value == 1 else 1


def _inspect_container(
    fmt: str, image: Image.Image, data: bytes, name: str, dropped: list[str]
) -> tuple[bool, SourceEncoding]:
    """Look at the file's structure for what Pillow does not report; returns (has video, encoding)."""
    if fmt == "JPEG":
        return _inspect_jpeg(image, data, name, dropped)
    if fmt == "PNG":
        return False, _inspect_png(data, name, dropped)
    if fmt == "WEBP":
        try:
            lossless = b"VP8L" in containers.riff_chunks(data)
        except ValueError:
            lossless = False
        return False, SourceEncoding(lossless=lossless)
    if fmt == "TIFF":
        try:
            tiff.check(data)
            found = tiff.facts(data)
        except ValueError as exc:
            raise PhotoError(f"{name}: {exc}") from exc
        dropped.extend(found.notes)
        return False, SourceEncoding(photoshop=found.photoshop, tiff_gps=found.has_gps)
    if fmt == "HEIF":
        extras = [label for key, label in _HEIF_EXTRAS.items() if image.info.get(key)]
        if extras:
            dropped.append("the HEIF " + " and ".join(extras))
        try:
            has_video = b"mpvd" in containers.bmff_boxes(data)  # Samsung's motion photo box
        except ValueError:
            has_video = False
        return has_video, SourceEncoding(nclx_profile=image.info.get("nclx_profile"), chroma=image.info.get("chroma"))
    try:
        coding = avif.coding(data)
    except ValueError:
        return False, SourceEncoding()  # Pillow decoded it; the output is then written at Pillow's defaults
    if coding.bits > 8 and image.mode not in ("RGB", "L"):
        dropped.append(f"the AVIF's {coding.bits}-bit depth (with alpha it is written at 8 bits)")
    return False, SourceEncoding(avif=coding)


def _inspect_jpeg(image: Image.Image, data: bytes, name: str, dropped: list[str]) -> tuple[bool, SourceEncoding]:
    encoding = SourceEncoding()  # the output is made from the source's own segments and scans
    if image.format == "MPO":
        count = image.n_frames - 1
        dropped.append(f"{count} MPF secondary image(s) (depth map, HDR gain map or second view)")
    try:
        layout = containers.jpeg_layout(data)
    except ValueError:
        return False, encoding  # Pillow decoded it; the layout only feeds the report below
    try:
        mode = jpegscans.scan_mode(data)
    except ValueError as exc:  # its scans could not be written back either
        raise PhotoError(f"{name}: {exc}") from exc
    if (lost := jpegscans.lost_in_writing(mode)) is not None:
        dropped.append(lost)
    photoshop: list[bytes] = []
    for marker, payload in jpeg.metadata_segments(data, layout):
        fate = jpeg.segment_fate(marker, payload)
        if fate == jpeg.PHOTOSHOP:
            photoshop.append(payload)
        elif fate not in jpeg.FATES and not (image.format == "MPO" and payload.startswith(b"MPF\0")) and fate not in dropped:
            dropped.append(fate)
    if photoshop:
        # Photoshop splits a block over 64 KiB across APP13 segments, each with its own header.
        joined = photoshop[0] + b"".join(p.removeprefix(PHOTOSHOP_HEADER) for p in photoshop[1:])
        try:
            encoding = replace(encoding, photoshop=PhotoshopBlock.parse(joined))
        except ValueError:
            dropped.append("the Photoshop/IPTC block (APP13; unreadable)")
        else:
            dropped.extend(encoding.photoshop.notes)  # type: ignore[union-attr]
    trailer = data[layout.end :]
    has_video = b"ftyp" in trailer or b"MotionPhoto_Data" in trailer
    if trailer.strip(b"\x00") and image.format != "MPO" and not has_video:
        dropped.append(f"{len(trailer)} bytes after the end of the image")
    return has_video, encoding


def _inspect_png(data: bytes, name: str, dropped: list[str]) -> SourceEncoding:
    try:
        chunks = containers.png_chunks(data)
    except ValueError:
        chunks = []  # Pillow decoded it; without a chunk list only the extra chunks are lost
    copied = []
    for kind, payload in chunks:
        keyword = payload.split(b"\0", 1)[0]
        if kind in (b"tEXt", b"zTXt", b"iTXt") and keyword.startswith(b"Raw profile type"):
            dropped.append(f"the PNG {keyword.decode('latin-1')} chunk")
        elif kind == b"iTXt" and keyword == b"XML:com.adobe.xmp":
            continue  # rewritten from the cleaned XMP
        elif kind in _PNG_COPIED:
            copied.append((kind, payload))
        elif kind == b"caBX":
            dropped.append("C2PA content credentials (they vouch for the original pixels)")
    return SourceEncoding(lossless=True, png_chunks=tuple(copied))


def _read_exif(raw: bytes | None, dropped: list[str]) -> ExifData | None:
    if not raw:
        return None
    try:
        exif = ExifData.parse(raw)
    except ValueError:
        dropped.append("the EXIF block (unreadable)")
        return None
    dropped.extend(exif.notes)
    return exif


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
