"""The pictures on the status page, made on demand from the original and its published copy.

Nothing is pre-rendered: a picture is made the first time a page asks for it,
from the files as they are now, and kept in a private cache in the state dir
(folder 0700, files 0600) under a name derived from both files' identity, so
a changed file gets new pictures. The cache is bounded; the oldest pictures go
first. Pictures never leave the machine: the page is served on loopback only.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from lowkeyd.errors import LowkeydError, PhotoError
from lowkeyd.photo import read_photo

log = logging.getLogger(__name__)

Kind = Literal["thumb", "original", "cloaked", "diff"]
KINDS: tuple[Kind, ...] = ("thumb", "original", "cloaked", "diff")
THUMB_SIZE = 320
VIEW_SIZE = 1200
# |cloaked - original| times this: the cloak changes pixels by a few levels, invisible unamplified.
DIFF_GAIN = 10
# Around each face crop, this fraction of the face's size, so its outline shows too.
CROP_MARGIN = 0.25
CACHE_BYTES = 256 * 1024 * 1024


class PictureUnavailable(LowkeydError):
    """The picture cannot be made: a file is gone or unreadable, or the face is not in it."""


@dataclass(frozen=True)
class Picture:
    data: bytes
    media_type: str


def _identity(path: Path | None) -> str:
    if path is None:
        return "-"
    try:
        st = path.stat()
    except OSError:
        return f"{path}:gone"
    return f"{path}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


def _pixels(path: Path | None, what: str) -> np.ndarray:
    if path is None:
        raise PictureUnavailable(f"there is no {what}")
    if not path.exists():
        raise PictureUnavailable(f"the {what} is gone ({path})")
    try:
        # As the daemon reads it: ``path`` is already resolved (see the app), so a link here is a swap since.
        return read_photo(path, follow_symlinks=False).rgb
    except (PhotoError, OSError) as exc:
        raise PictureUnavailable(f"the {what} cannot be read: {exc}") from None


def _encode(rgb: np.ndarray, *, lossless: bool, fit: int | None = None) -> Picture:
    image = Image.fromarray(rgb)
    if fit is not None:
        image.thumbnail((fit, fit), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if lossless:  # the crops and the difference are looked at for small changes: no JPEG artefacts of our own
        image.save(out, "PNG", optimize=False, compress_level=3)
        return Picture(out.getvalue(), "image/png")
    image.save(out, "JPEG", quality=88)
    return Picture(out.getvalue(), "image/jpeg")


def _difference(original: np.ndarray, cloaked: np.ndarray) -> np.ndarray:
    if original.shape != cloaked.shape:
        raise PictureUnavailable(
            f"the published copy is {cloaked.shape[1]}x{cloaked.shape[0]}, the original "
            f"{original.shape[1]}x{original.shape[0]}: no pixel-by-pixel difference"
        )
    diff = np.abs(cloaked.astype(np.int16) - original.astype(np.int16)) * DIFF_GAIN
    return np.clip(diff, 0, 255).astype(np.uint8)


def crop_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int]:
    """A face's box widened by :data:`CROP_MARGIN` and clipped to the photo, in whole pixels."""
    x0, y0, x1, y1 = box
    mx, my = (x1 - x0) * CROP_MARGIN, (y1 - y0) * CROP_MARGIN
    left, top = max(0, int(x0 - mx)), max(0, int(y0 - my))
    right, bottom = min(width, int(np.ceil(x1 + mx))), min(height, int(np.ceil(y1 + my)))
    if right <= left or bottom <= top:
        raise PictureUnavailable("the face is outside the photo")
    return left, top, right, bottom


def render(
    kind: Kind, original: Path | None, cloaked: Path | None, face: tuple[float, float, float, float] | None
) -> Picture:
    """One picture: ``thumb`` (of the published copy, else the original), ``original``, ``cloaked`` or ``diff``;
    with ``face``, that face's crop at 1:1 instead of the whole photo scaled down."""
    if kind == "thumb":
        try:
            return _encode(_pixels(cloaked, "published copy"), lossless=False, fit=THUMB_SIZE)
        except PictureUnavailable:
            return _encode(_pixels(original, "original"), lossless=False, fit=THUMB_SIZE)
    if kind == "diff":
        rgb = _difference(_pixels(original, "original"), _pixels(cloaked, "published copy"))
    else:
        rgb = _pixels(original, "original") if kind == "original" else _pixels(cloaked, "published copy")
    if face is None:
        return _encode(rgb, lossless=kind == "diff", fit=VIEW_SIZE)
    left, top, right, bottom = crop_box(face, rgb.shape[1], rgb.shape[0])
    return _encode(np.ascontiguousarray(rgb[top:bottom, left:right]), lossless=True)


class PictureCache:
    """Pictures kept in ``folder`` (0700; files 0600), at most ``limit`` bytes, oldest dropped first."""

    def __init__(self, folder: Path, limit: int = CACHE_BYTES) -> None:
        self.folder = folder
        self.limit = limit

    def get(
        self, kind: Kind, original: Path | None, cloaked: Path | None, face: tuple[float, float, float, float] | None
    ) -> Picture:
        key = "|".join([kind, _identity(original), _identity(cloaked), repr(face)])
        name = hashlib.sha256(key.encode()).hexdigest()[:40]
        for suffix, media_type in ((".jpg", "image/jpeg"), (".png", "image/png")):
            try:
                return Picture((self.folder / (name + suffix)).read_bytes(), media_type)
            except FileNotFoundError:
                continue
        picture = render(kind, original, cloaked, face)
        self._keep(name + (".png" if picture.media_type == "image/png" else ".jpg"), picture.data)
        return picture

    def _keep(self, name: str, data: bytes) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.folder.chmod(0o700)
            # mkstemp makes the file 0600 from the start; the rename makes it appear whole.
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self.folder / name)
            self._trim()
        except OSError as exc:  # a picture not kept is only made again next time
            log.warning("status page: cannot keep a picture in %s: %s", self.folder, exc.strerror or exc)

    def _trim(self) -> None:
        entries = []
        for entry in os.scandir(self.folder):
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            entries.append((st.st_mtime, st.st_size, entry.path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.limit:
                break
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            total -= size
