"""Writing cloaked pixels back in the source's format, with its metadata and lowkeyd's marker.

Only what lowkeyd chose to carry is written: EXIF (new thumbnail, GPS optional), ICC, the
cleaned XMP and a few format details. MPF images, gain maps, trailing data, motion videos,
HEIF thumbnails/depth/auxiliary images and any other segment of the source are not.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from lowkeyd.errors import PhotoError
from lowkeyd.photo.atomic import atomic_write
from lowkeyd.photo.formats import LABELS
from lowkeyd.photo.model import Photo
from lowkeyd.photo.orientation import TO_STORED
from lowkeyd.photo.xmp import Xmp

# libjpeg quality the output never goes below: the cloak is a small perturbation that coarser
# quantisation would wash out. A source encoded finer keeps its own tables.
JPEG_QUALITY = 92
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
    out = io.BytesIO()
    try:
        exif = (
            photo.exif.dump(orientation=photo.orientation, strip_gps=strip_gps, thumbnail_of=image)
            if photo.exif is not None
            else None
        )
        _SAVERS[photo.format](image, out, photo, exif, xmp.to_bytes())
    except (OSError, ValueError) as exc:
        raise PhotoError(f"{photo.name}: cannot encode the {LABELS[photo.format]} output ({exc})") from exc
    return out.getvalue()


def write_photo(
    photo: Photo, rgb: np.ndarray, dest: Path | str, *, strip_gps: bool = True, marker: dict[str, str]
) -> Path:
    """Encode like :func:`encode_photo` and write ``dest`` atomically with the source's mtime and mode."""
    dest = Path(dest)
    if photo.source_path is not None and _same_file(photo.source_path, dest):
        raise PhotoError(f"{dest}: refusing to overwrite the original photo")
    atomic_write(dest, encode_photo(photo, rgb, strip_gps=strip_gps, marker=marker), like=photo.source_stat)
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


@functools.cache
def _reference_qtables() -> tuple[tuple[int, ...], ...]:
    """libjpeg's tables at JPEG_QUALITY, taken from the encoder itself."""
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="JPEG", quality=JPEG_QUALITY)
    with Image.open(out) as im:
        return tuple(tuple(im.quantization[k]) for k in sorted(im.quantization))


def _jpeg_quantisation(photo: Photo) -> dict[str, Any]:
    source = photo.encoding.jpeg_qtables
    reference = _reference_qtables()
    if source and all(sum(t) <= sum(reference[min(i, len(reference) - 1)]) for i, t in enumerate(source)):
        return {"qtables": [list(t) for t in source]}
    return {"quality": JPEG_QUALITY}


def _save_jpeg(image: Image.Image, out: io.BytesIO, photo: Photo, exif: bytes | None, xmp: bytes) -> None:
    options = _common(photo, exif) | _jpeg_quantisation(photo)
    if photo.encoding.dpi:
        options["dpi"] = photo.encoding.dpi
    if photo.encoding.comment:
        options["comment"] = photo.encoding.comment
    image.save(
        out,
        format="JPEG",
        subsampling="4:4:4",
        optimize=True,
        progressive=photo.encoding.progressive,
        xmp=xmp,
        **options,
    )


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
    "JPEG": _save_jpeg,
    "PNG": _save_png,
    "WEBP": _save_webp,
    "HEIF": _save_heif,
    "AVIF": _save_avif,
}
