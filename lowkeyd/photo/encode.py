"""Writing cloaked pixels back in the source's format, with its metadata (and lowkeyd's marker only when asked).

A JPEG is the source file itself with its metadata sanitised and only the changed blocks
re-encoded (:mod:`lowkeyd.photo.jpeg`, :mod:`lowkeyd.photo.jpegblocks`); a TIFF likewise,
with only the changed strips or tiles compressed again (:mod:`lowkeyd.photo.tiff`). Other
formats are encoded afresh carrying what lowkeyd chose to keep: EXIF (through libexiv2: the
thumbnail kept where no pixel changed, rebuilt otherwise; GPS optional), ICC, the cleaned XMP and a few format details (bit depth, chroma
subsampling, PNG chunks). MPF images, gain maps, trailing data, motion videos, Photoshop
layers and HEIF thumbnails/depth/auxiliary images are never written.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pillow_heif
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from lowkeyd.errors import PhotoError
from lowkeyd.photo import avif, containers, jpeg, jpegblocks, tiff
from lowkeyd.photo.atomic import atomic_write
from lowkeyd.photo.exif import ORIENTATION
from lowkeyd.photo.formats import LABELS
from lowkeyd.photo.model import Photo
from lowkeyd.photo.orientation import TO_STORED, transpose_array
from lowkeyd.photo.sizing import match_size
from lowkeyd.photo.xmp import Xmp

# pillow-heif's names for 16-bit sample layouts, by channel count.
_HEIF_DEEP_MODES = {1: "L;16", 3: "RGB;16", 4: "RGBA;16"}


def encode_photo(
    photo: Photo, rgb: np.ndarray, *, strip_gps: bool = True, marker: dict[str, str] | None = None
) -> bytes:
    """The bytes of ``photo`` with its pixels replaced by ``rgb`` (upright, same shape as ``photo.rgb``).

    ``marker`` becomes the fields of the XMP ``lowkeyd:Cloaked`` structure (e.g. version and
    preset); keys must be XML names. Without it the file says nothing of lowkeyd: a marker the
    source carried goes, and a source without XMP gets none. ``strip_gps`` removes GPS from EXIF and XMP.
    """
    image = _stored_image(photo, rgb)
    xmp = photo.xmp.copy() if photo.xmp is not None else Xmp.empty() if marker is not None else None
    if xmp is not None:
        if strip_gps:
            xmp.remove_gps()
        if photo.orientation == 1:  # stored upright: an XMP orientation would turn it a second time
            xmp.make_upright()
        if marker is None:
            xmp.remove_marker()
        else:
            xmp.set_marker(marker)
    try:
        # Pillow re-serialises (and so mangles) AVIF EXIF that has an Orientation tag: an AVIF is written upright.
        without = frozenset({ORIENTATION}) if photo.format == "AVIF" else frozenset()
        exif = None
        if photo.exif is not None:
            # Unchanged pixels keep the camera's own thumbnail, if it still shows them.
            unchanged = np.array_equal(rgb, photo.rgb)
            exif = photo.exif.dump(strip_gps=strip_gps, thumbnail_of=image, keep_thumbnail=unchanged, without=without)
        samples = _stored_samples(photo, rgb)
        if photo.format == "JPEG":
            return _encode_jpeg(photo, image, samples, exif, xmp, strip_gps=strip_gps)
        if photo.format == "TIFF":
            return _encode_tiff(photo, samples, xmp, strip_gps=strip_gps)
        return _ENCODERS[photo.format](image, samples, photo, exif, xmp.to_bytes() if xmp is not None else b"")
    except (OSError, ValueError, cv2.error) as exc:
        raise PhotoError(f"{photo.name}: cannot encode the {LABELS[photo.format]} output ({exc})") from exc


def write_photo(
    photo: Photo, rgb: np.ndarray, dest: Path | str, *, strip_gps: bool = True, marker: dict[str, str] | None = None
) -> Path:
    """Encode like :func:`encode_photo` and write ``dest`` atomically with the source's mtime and mode."""
    return write_bytes(photo, encode_photo(photo, rgb, strip_gps=strip_gps, marker=marker), dest)


def write_bytes(photo: Photo, data: bytes, dest: Path | str) -> Path:
    """Write ``data`` (encoded from ``photo``) to ``dest`` atomically with the source's mtime and mode."""
    dest = Path(dest)
    if photo.source_path is not None and _same_file(photo.source_path, dest):
        raise PhotoError(f"{dest}: refusing to overwrite the original photo")
    atomic_write(dest, data, like=photo.source_stat)
    return dest


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False  # one of them does not exist


def _stored_image(photo: Photo, rgb: np.ndarray) -> Image.Image:
    """The output pixels as Pillow will store them: source mode, alpha, stored orientation."""
    if rgb.shape != photo.rgb.shape or rgb.dtype != np.uint8:
        raise ValueError(f"cloaked pixels must be uint8 of shape {photo.rgb.shape}, got {rgb.dtype} {rgb.shape}")
    image = Image.fromarray(np.ascontiguousarray(rgb))
    if photo.grayscale:
        image = image.convert("L")
    if photo.alpha is not None:
        image.putalpha(Image.fromarray(np.ascontiguousarray(photo.alpha)))
    if (transpose := TO_STORED.get(photo.orientation)) is not None:  # FLIP_LEFT_RIGHT is 0
        image = image.transpose(transpose)
    return image


def _stored_samples(photo: Photo, rgb: np.ndarray) -> np.ndarray | None:
    """The output's own samples (deep or CMYK) in stored orientation, or None for an 8-bit RGB/gray source."""
    if photo.samples is None:
        return None
    return transpose_array(photo.samples.cloaked(photo.rgb, rgb), TO_STORED.get(photo.orientation))


def _source_samples(photo: Photo) -> np.ndarray:
    assert photo.samples is not None  # only called for photos that have them
    return transpose_array(photo.samples.array, TO_STORED.get(photo.orientation))


def _common(photo: Photo, exif: bytes | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if exif:
        options["exif"] = exif
    if photo.icc_profile:
        options["icc_profile"] = photo.icc_profile
    return options


def _encode_jpeg(
    photo: Photo, image: Image.Image, samples: np.ndarray | None, exif: bytes | None, xmp: Xmp | None, *, strip_gps: bool
) -> bytes:
    """The source file with sanitised metadata; only the blocks holding changed pixels are re-encoded."""
    if samples is not None:  # CMYK: the inks themselves are what the blocks code
        before, after = _source_samples(photo), samples
    else:
        before, after = np.asarray(_stored_image(photo, photo.rgb).convert(image.mode)), np.asarray(image)
    picture = jpegblocks.reencode(photo.source_bytes, before, after)
    photoshop = _photoshop(photo, xmp, strip_gps=strip_gps)
    packet = xmp.to_bytes() if xmp is not None else None
    return jpeg.assemble(photo.source_bytes, exif=exif, xmp=packet, photoshop=photoshop, image=picture)


def _encode_tiff(photo: Photo, samples: np.ndarray | None, xmp: Xmp | None, *, strip_gps: bool) -> bytes:
    """The source file with only the changed strips or tiles compressed again, its metadata edited by libexiv2."""
    assert samples is not None  # a TIFF's samples are always kept
    pixels = tiff.with_pixels(photo.source_bytes, _source_samples(photo), samples)
    return tiff.with_metadata(
        pixels, strip_gps=strip_gps, xmp=xmp.to_bytes() if xmp is not None else None,
        photoshop=_photoshop(photo, xmp, strip_gps=strip_gps), person_names=_person_names(xmp),
    )


def _person_names(xmp: Xmp | None) -> set[str]:
    return xmp.person_names if xmp is not None else set()


def _photoshop(photo: Photo, xmp: Xmp | None, *, strip_gps: bool) -> bytes | None:
    """The source's Photoshop block, cleaned of what the XMP says leaks; None where it had none."""
    block = photo.encoding.photoshop
    return block.cleaned(strip_location=strip_gps, person_names=_person_names(xmp)) if block else None


def _encode_png(image: Image.Image, samples: np.ndarray | None, photo: Photo, exif: bytes | None, xmp: bytes) -> bytes:
    info = PngInfo()
    if xmp:
        info.add_itxt("XML:com.adobe.xmp", xmp.decode("utf-8"))
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info, **_common(photo, exif))
    # The source's own chunks go in after the header: Pillow writes pHYs only from a dpi it rounds.
    data = containers.png_with_chunks(out.getvalue(), photo.encoding.png_chunks)
    if samples is None:
        return data
    # Pillow has no 16-bit colour mode: OpenCV codes the samples, Pillow's file lends the chunks.
    bgr = samples[..., 0] if samples.shape[2] == 1 else cv2.cvtColor(samples, cv2.COLOR_RGBA2BGRA if samples.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    ok, coded = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise ValueError("OpenCV could not encode the 16-bit PNG")
    return containers.png_with_image(data, coded.tobytes())


def _size_target(photo: Photo, exif: bytes | None, xmp: bytes) -> int:
    """The source's size less its metadata plus the output's: the same bits per pixel for the picture."""
    assert photo.encoding.image_bytes is not None  # set for every size-matched format
    return max(1, photo.encoding.image_bytes + len(exif or b"") + len(xmp) + len(photo.icc_profile or b""))


def _encode_webp(image: Image.Image, samples: np.ndarray | None, photo: Photo, exif: bytes | None, xmp: bytes) -> bytes:
    def at(quality: int | None) -> bytes:
        out = io.BytesIO()
        level = {"lossless": True} if quality is None else {"quality": quality, "alpha_quality": 100}
        # exact: keep the colour under fully transparent pixels, as the source had it
        image.save(out, format="WEBP", exact=True, xmp=xmp, **level, **_common(photo, exif))
        return out.getvalue()

    if photo.encoding.lossless:
        return at(None)
    return match_size(at, _size_target(photo, exif, xmp))[0]


def _encode_heif(image: Image.Image, samples: np.ndarray | None, photo: Photo, exif: bytes | None, xmp: bytes) -> bytes:
    if samples is None:
        heif = pillow_heif.from_pillow(image)
    else:  # pillow-heif takes deep samples scaled to 16 bits and stores them at 10 or 12
        wide = samples.astype(np.uint16) << (16 - photo.bit_depth)
        heif = pillow_heif.from_bytes(mode=_HEIF_DEEP_MODES[wide.shape[2]], size=image.size, data=wide.tobytes())
    heif.info.pop("exif", None)
    if photo.icc_profile:
        heif.info["icc_profile"] = photo.icc_profile
    if photo.encoding.nclx_profile:
        heif.info["nclx_profile"] = photo.encoding.nclx_profile
    chroma = {"chroma": photo.encoding.chroma} if photo.encoding.chroma else {}
    save_12 = pillow_heif.options.SAVE_HDR_TO_12_BIT
    pillow_heif.options.SAVE_HDR_TO_12_BIT = photo.bit_depth > 10

    def at(quality: int) -> bytes:
        out = io.BytesIO()
        heif.save(out, quality=quality, exif=exif, xmp=xmp or None, **chroma)
        return out.getvalue()

    try:
        return match_size(at, _size_target(photo, exif, xmp))[0]
    finally:
        pillow_heif.options.SAVE_HDR_TO_12_BIT = save_12


def _encode_avif(image: Image.Image, samples: np.ndarray | None, photo: Photo, exif: bytes | None, xmp: bytes) -> bytes:
    coding = photo.encoding.avif
    # The source's chroma subsampling: Pillow's default 4:2:0 blurs a 4:4:4 source's colour edges.
    subsampling = {"subsampling": coding.subsampling} if coding is not None else {}

    def pillow(quality: int) -> bytes:
        out = io.BytesIO()
        image.save(out, format="AVIF", quality=quality, xmp=xmp, **subsampling, **_common(photo, exif))
        return out.getvalue()

    at = pillow
    if samples is not None and coding is not None:  # deeper than 8 bits: Pillow's file lends its metadata boxes
        carrier = pillow(1)
        at = functools.partial(avif.deep_file, carrier, samples, coding)
    return match_size(at, _size_target(photo, exif, xmp))[0]


_ENCODERS: dict[str, Callable[[Image.Image, np.ndarray | None, Photo, bytes | None, bytes], bytes]] = {
    "PNG": _encode_png,
    "WEBP": _encode_webp,
    "HEIF": _encode_heif,
    "AVIF": _encode_avif,
}
