"""The decoded photo handed between :mod:`lowkeyd.photo.decode` and :mod:`lowkeyd.photo.encode`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lowkeyd.photo.exif import ExifData
from lowkeyd.photo.iptc import PhotoshopBlock
from lowkeyd.photo.samples import Samples
from lowkeyd.photo.xmp import Xmp

if TYPE_CHECKING:  # the AVIF codec builds a SourceEncoding: a runtime import would go round in a circle
    from lowkeyd.photo.avif import AvifCoding


@dataclass(frozen=True)
class SourceEncoding:
    """How the source was encoded, as far as the output should follow it."""

    lossless: bool = False  # WebP: the source was VP8L; PNG is always lossless
    png_chunks: tuple[tuple[bytes, bytes], ...] = ()  # PNG ancillary chunks copied verbatim
    nclx_profile: dict | None = None  # HEIF: colour description when given as NCLX, not ICC
    photoshop: PhotoshopBlock | None = None  # JPEG: the APP13 block; TIFF: its ImageResources
    tiff_gps: bool = False  # TIFF: GPS tags or IPTC location fields in the file's own IFDs
    image_bytes: int | None = None  # HEIF/AVIF/WebP: the file less its EXIF, XMP and ICC, the output's target
    chroma: int | None = None  # HEIF: chroma subsampling (420, 422, 444), kept by the output
    avif: AvifCoding | None = None  # AVIF: depth, chroma subsampling and colour description, kept by the output


@dataclass(frozen=True, eq=False)
class Photo:
    """A photo ready to cloak: upright 8-bit pixels plus everything needed to write it back.

    ``rgb`` is what the engine cloaks; a source deeper than 8 bits or in CMYK also keeps its
    own ``samples``, onto which the output carries the cloak's change.

    ``rgb`` and ``alpha`` are upright (the EXIF orientation is already applied) and in the
    source's own colour space (see ``icc_profile``); treat them as read-only.
    """

    rgb: np.ndarray  # (H, W, 3) uint8, upright
    alpha: np.ndarray | None  # (H, W) uint8, upright; None when the source has no alpha
    format: str  # Pillow's name: "JPEG", "PNG", "WEBP", "HEIF", "AVIF" or "TIFF"
    source_path: Path | None  # None when read from bytes
    grayscale: bool  # written back as grayscale; the cloak's colour part is then lost
    orientation: int  # EXIF orientation of the stored pixels (1-8); the output keeps it
    exif: ExifData | None
    icc_profile: bytes | None
    xmp: Xmp | None  # already without face regions, person names and embedded-media pointers
    encoding: SourceEncoding
    cloak_marker: dict[str, str] | None  # lowkeyd's marker fields when lowkeyd wrote this file
    has_motion_video: bool  # a Motion Photo / micro video was attached; it is never written out
    dropped: tuple[str, ...] = ()  # what the output will not carry, in words, for logs and reports
    has_location: bool = False  # GPS in EXIF or XMP, or IPTC location fields
    samples: Samples | None = None  # the source's own samples when deeper than 8 bits, CMYK, or TIFF
    source_stat: os.stat_result | None = field(default=None, repr=False)
    source_bytes: bytes = field(default=b"", repr=False)  # the file as read: a JPEG output is made from it

    def drops(self, *, strip_gps: bool) -> tuple[str, ...]:
        """What the output written with ``strip_gps`` leaves out, in words, for messages and reports."""
        if strip_gps and self.has_location:
            return ("the GPS position and location fields", *self.dropped)
        return self.dropped

    @property
    def bit_depth(self) -> int:
        """Bits per sample of the source, and of the output."""
        return self.samples.bits if self.samples is not None else 8

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the upright image."""
        return self.rgb.shape[1], self.rgb.shape[0]

    @property
    def name(self) -> str:
        """A name to show in messages."""
        return self.source_path.name if self.source_path else "<input>"
