"""Writing cloaked pixels back in the source's format, with its metadata and lowkeyd's marker.

A JPEG is the source file itself with its metadata sanitised and only the changed blocks
re-encoded (:mod:`lowkeyd.photo.jpeg`, :mod:`lowkeyd.photo.jpegblocks`). Other formats are
encoded afresh carrying what lowkeyd chose to keep: EXIF (through libexiv2: new thumbnail,
GPS optional), ICC, the cleaned XMP and a few format details. MPF images, gain maps,
trailing data, motion videos and HEIF thumbnails/depth/auxiliary images are never written.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from lowkeyd.errors import PhotoError
from lowkeyd.photo import jpeg, jpegblocks
from lowkeyd.photo.atomic import atomic_write
from lowkeyd.photo.formats import LABELS
from lowkeyd.photo.model import Photo
from lowkeyd.photo.orientation import TO_STORED
from lowkeyd.photo.xmp import Xmp

WEBP_QUALITY = 95  # lossy WebP sources only; lossless sources stay lossless
HEIF_QUALITY = 90
AVIF_QUALITY = 90


def encode_photo(photo: Photo, rgb: np.ndarray, *, strip_gps: bool = True, marker: dict[str, str]) -> bytes:
    """The bytes of ``photo`` with its pixels replaced by ``rgb`` (upright, same shape as ``photo.rgb``).

    ``marker`` becomes the fields of the XMP ``lowkeyd:Cloaked`` structure (e.g. version and
    preset); keys must be XML names. ``strip_gps`` removes GPS from EXIF and XMP.
    """
    image = _stored_image(photo, rgb)
    xmp = photo.xmp.copy() if photo.xmp is not None else Xmp.empty()
    if strip_gps:
        xmp.remove_gps()
    xmp.set_marker(marker)
    try:
        exif = photo.exif.dump(strip_gps=strip_gps, thumbnail_of=image) if photo.exif is not None else None
        if photo.format == "JPEG":
            return _encode_jpeg(photo, image, exif, xmp, strip_gps=strip_gps)
        out = io.BytesIO()
        _SAVERS[photo.format](image, out, photo, exif, xmp.to_bytes())
    except (OSError, ValueError) as exc:
        raise PhotoError(f"{photo.name}: cannot encode the {LABELS[photo.format]} output ({exc})") from exc
    return out.getvalue()


def write_photo(
    photo: Photo, rgb: np.ndarray, dest: Path | str, *, strip_gps: bool = True, marker: dict[str, str]
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


def _common(photo: Photo, exif: bytes | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if exif:
        options["exif"] = exif
    if photo.icc_profile:
        options["icc_profile"] = photo.icc_profile
    return options


def _encode_jpeg(photo: Photo, image: Image.Image, exif: bytes | None, xmp: Xmp, *, strip_gps: bool) -> bytes:
    """The source file with sanitised metadata; only the blocks holding changed pixels are re-encoded."""
    before = np.asarray(_stored_image(photo, photo.rgb).convert(image.mode))
    after = np.asarray(image)
    picture = jpegblocks.reencode(photo.source_bytes, before, after, progressive=photo.encoding.progressive)
    block = photo.encoding.photoshop
    photoshop = block.cleaned(strip_location=strip_gps, person_names=xmp.person_names) if block else None
    return jpeg.assemble(photo.source_bytes, exif=exif, xmp=xmp.to_bytes(), photoshop=photoshop, image=picture)


def _save_png(image: Image.Image, out: io.BytesIO, photo: Photo, exif: bytes | None, xmp: bytes) -> None:
    info = PngInfo()
    for kind, payload in photo.encoding.png_chunks:
        info.add(kind, payload)
    info.add_itxt("XML:com.adobe.xmp", xmp.decode("utf-8"))
    image.save(out, format="PNG", pnginfo=info, **_common(photo, exif))


def _save_webp(image: Image.Image, out: io.BytesIO, photo: Photo, exif: bytes | None, xmp: bytes) -> None:
    quality = {"lossless": True} if photo.encoding.lossless else {"quality": WEBP_QUALITY, "alpha_quality": 100}
    # exact: keep the colour under fully transparent pixels, as the source had it
    image.save(out, format="WEBP", exact=True, xmp=xmp, **quality, **_common(photo, exif))


def _save_heif(image: Image.Image, out: io.BytesIO, photo: Photo, exif: bytes | None, xmp: bytes) -> None:
    options = _common(photo, exif)
    if photo.encoding.nclx_profile:
        options["nclx_profile"] = photo.encoding.nclx_profile
    image.save(out, format="HEIF", quality=HEIF_QUALITY, xmp=xmp, **options)


def _save_avif(image: Image.Image, out: io.BytesIO, photo: Photo, exif: bytes | None, xmp: bytes) -> None:
    image.save(out, format="AVIF", quality=AVIF_QUALITY, subsampling="4:4:4", xmp=xmp, **_common(photo, exif))


_SAVERS: dict[str, Callable[[Image.Image, io.BytesIO, Photo, bytes | None, bytes], None]] = {
    "PNG": _save_png,
    "WEBP": _save_webp,
    "HEIF": _save_heif,
    "AVIF": _save_avif,
}
