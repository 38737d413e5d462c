"""Writing cloaked pixels back in the source's format, with its metadata (and lowkeyd's marker only when asked).

What is the same for every format happens here: the pixels in the source's mode and stored
orientation, the cleaned XMP with lowkeyd's marker set or removed, the sanitised EXIF (through
libexiv2: the thumbnail kept where no pixel changed, rebuilt otherwise; GPS optional) and the
source's own samples carrying the cloak. The format's codec (:mod:`lowkeyd.photo.formats`)
writes the file: a JPEG or TIFF is the source file with only the changed blocks, strips or
tiles coded again; other formats are encoded afresh with the format details lowkeyd keeps.
MPF images, gain maps, trailing data, motion videos, Photoshop layers and HEIF
thumbnails/depth/auxiliary images are never written.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from lowkeyd.errors import PhotoError
from lowkeyd.photo.atomic import atomic_write
from lowkeyd.photo.codec import Cloaked, stored_image
from lowkeyd.photo.formats import codec_for
from lowkeyd.photo.model import Photo
from lowkeyd.photo.orientation import TO_STORED, transpose_array
from lowkeyd.photo.xmp import Xmp


def encode_photo(
    photo: Photo, rgb: np.ndarray, *, strip_gps: bool = True, marker: dict[str, str] | None = None
) -> bytes:
    """The bytes of ``photo`` with its pixels replaced by ``rgb`` (upright, same shape as ``photo.rgb``).

    ``marker`` becomes the fields of the XMP ``lowkeyd:Cloaked`` structure (e.g. version and
    preset); keys must be XML names. Without it the file says nothing of lowkeyd: a marker the
    source carried goes, and a source without XMP gets none. ``strip_gps`` removes GPS from EXIF and XMP.
    """
    codec = codec_for(photo.format)
    image = stored_image(photo, rgb)
    xmp = _xmp(photo, strip_gps=strip_gps, marker=marker)
    try:
        exif = None
        if photo.exif is not None:
            # Unchanged pixels keep the camera's own thumbnail, if it still shows them.
            unchanged = np.array_equal(rgb, photo.rgb)
            exif = photo.exif.dump(strip_gps=strip_gps, thumbnail_of=image, keep_thumbnail=unchanged, without=codec.exif_without)
        samples = _stored_samples(photo, rgb)
        return codec.encode(Cloaked(photo, image, samples, exif, xmp, strip_gps))
    except (OSError, ValueError, cv2.error) as exc:
        raise PhotoError(f"{photo.name}: cannot encode the {codec.label} output ({exc})") from exc


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


def _xmp(photo: Photo, *, strip_gps: bool, marker: dict[str, str] | None) -> Xmp | None:
    """The output's XMP: the source's cleaned packet, or a new one to carry the marker; None for none."""
    xmp = photo.xmp.copy() if photo.xmp is not None else Xmp.empty() if marker is not None else None
    if xmp is None:
        return None
    if strip_gps:
        xmp.remove_gps()
    if photo.orientation == 1:  # stored upright: an XMP orientation would turn it a second time
        xmp.make_upright()
    if marker is None:
        xmp.remove_marker()
    else:
        xmp.set_marker(marker)
    return xmp


def _stored_samples(photo: Photo, rgb: np.ndarray) -> np.ndarray | None:
    """The output's own samples (deep or CMYK) in stored orientation, or None for an 8-bit RGB/gray source."""
    if photo.samples is None:
        return None
    return transpose_array(photo.samples.cloaked(photo.rgb, rgb), TO_STORED.get(photo.orientation))
