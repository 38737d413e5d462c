"""What a photo format is to lowkeyd: one :class:`Codec` per format, each in its own module.

A codec names its format (Pillow's name, extensions, a label for messages), says why an opened
image is not one lowkeyd cloaks, reads what Pillow does not report (the container's structure,
samples deeper than 8 bits) and writes the cloaked pixels back in the format.
:mod:`lowkeyd.photo.formats` lists the codecs; :mod:`lowkeyd.photo.decode` and
:mod:`lowkeyd.photo.encode` do what is the same for every format.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple, Protocol, TypeVar

import numpy as np
from PIL import Image

from lowkeyd.photo.exif import ExifData
from lowkeyd.photo.model import Photo, SourceEncoding
from lowkeyd.photo.orientation import TO_STORED, transpose_array
from lowkeyd.photo.xmp import Xmp

# Colour modes, as Pillow decodes them, lowkeyd can cloak: mode -> (grayscale, has alpha).
MODES = {
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


class Inspection(NamedTuple):
    """What a codec read from the file's structure beyond Pillow's decode."""

    encoding: SourceEncoding
    has_video: bool = False  # a motion video rides along in the container


@dataclass(frozen=True)
class Cloaked:
    """The output a codec writes: the cloaked picture in stored orientation and the metadata lowkeyd keeps."""

    photo: Photo
    image: Image.Image  # the cloaked pixels in the source's mode, with its alpha
    samples: np.ndarray | None  # the source's own samples (deep, CMYK, TIFF) carrying the cloak; else None
    exif: bytes | None  # the sanitised EXIF block
    xmp: Xmp | None  # the cleaned packet, lowkeyd's marker set or removed
    strip_gps: bool

    @cached_property
    def packet(self) -> bytes | None:
        """The XMP packet to write; None for none."""
        return self.xmp.to_bytes() if self.xmp is not None else None

    @cached_property
    def source_samples(self) -> np.ndarray:
        """The source's own samples in stored orientation (the photo has them)."""
        assert self.photo.samples is not None  # only asked of photos that keep their samples
        return transpose_array(self.photo.samples.array, TO_STORED.get(self.photo.orientation))

    @property
    def person_names(self) -> set[str]:
        """The names the source's XMP gave the people in the picture."""
        return self.xmp.person_names if self.xmp is not None else set()

    def photoshop(self) -> bytes | None:
        """The source's Photoshop block, cleaned of what the XMP says leaks; None where it had none."""
        block = self.photo.encoding.photoshop
        return block.cleaned(strip_location=self.strip_gps, person_names=self.person_names) if block else None

    def pillow_options(self) -> dict[str, Any]:
        """The EXIF and ICC profile as Pillow's save options take them."""
        options: dict[str, Any] = {}
        if self.exif:
            options["exif"] = self.exif
        if self.photo.icc_profile:
            options["icc_profile"] = self.photo.icc_profile
        return options

    def size_target(self) -> int:
        """The source's size less its metadata plus the output's: the same bits per pixel for the picture."""
        assert self.photo.encoding.image_bytes is not None  # set by every size-matched codec
        metadata = len(self.exif or b"") + len(self.packet or b"") + len(self.photo.icc_profile or b"")
        return max(1, self.photo.encoding.image_bytes + metadata)


class Codec(ABC):
    """One photo format: Pillow's name for it, its extensions, how it is read and written back."""

    name: str  # Pillow's format name, and :attr:`Photo.format`
    label: str  # the format's name in messages
    extensions: tuple[str, ...]  # lower case; the first is the one a misnamed file is told to take
    aliases: tuple[str, ...] = ()  # other names Pillow's opener gives this format
    several: str = "is animated ({} frames)"  # what a file of several pictures is, in words
    exif_without: frozenset[str] = frozenset()  # EXIF tags the output never carries

    def refusal(self, image: Image.Image) -> str | None:
        """Why lowkeyd does not cloak this opened image, in words; None when it does."""
        if (frames := self.pictures(image)) > 1:
            return f"the {self.label} {self.several.format(frames)}; lowkeyd cloaks still photos only"
        if image.mode not in MODES:
            return f"{_mode_reason(image.mode)}; lowkeyd cloaks RGB, grayscale and CMYK photos"
        return None

    def pictures(self, image: Image.Image) -> int:
        """How many pictures the file holds that a cloak would have to cover."""
        return getattr(image, "n_frames", 1)

    @abstractmethod
    def inspect(self, image: Image.Image, data: bytes, name: str, dropped: list[str]) -> Inspection:
        """Read the file's structure for what Pillow does not report, noting in ``dropped`` what the output loses.

        PhotoError (naming ``name``) where the structure rules out writing it back.
        """

    def samples(self, image: Image.Image, data: bytes) -> tuple[np.ndarray, int] | None:
        """Decode the picture: (stored (H, W, C) samples, significant bits) where the output keeps the source's own.

        None where Pillow's decode (in ``image``) is what lowkeyd cloaks and writes.
        """
        image.load()
        return self.deep_samples(image, data)

    def deep_samples(self, image: Image.Image, data: bytes) -> tuple[np.ndarray, int] | None:
        """The samples of a source deeper than Pillow decodes (after Pillow's decode); None for 8 bits."""
        return None

    def kept_orientation(self, orientation: int, exif: ExifData | None, dropped: list[str]) -> int:
        """The orientation the output is stored in, noting in ``dropped`` a tag it loses.

        Without an EXIF block there is no tag to keep, so the output is written upright.
        """
        return orientation if exif is not None else 1

    @abstractmethod
    def encode(self, cloaked: Cloaked) -> bytes:
        """The output file; OSError or ValueError where it cannot be written."""


def stored_image(photo: Photo, rgb: np.ndarray) -> Image.Image:
    """Upright 8-bit pixels of ``photo`` as Pillow will store them: source mode, alpha, stored orientation."""
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


def source_image_bytes(image: Image.Image, data: bytes) -> int:
    """The file's size less its EXIF, XMP and ICC: what a size-matched output aims for, plus its own metadata."""
    return len(data) - sum(len(image.info.get(key) or b"") for key in ("exif", "xmp", "icc_profile"))


class _Noted(Protocol):
    notes: list[str]  # what the output will not carry of it, in words


_Block = TypeVar("_Block", bound=_Noted)


def read_block(parse: Callable[[bytes], _Block], raw: bytes, unreadable: str, dropped: list[str]) -> _Block | None:
    """A metadata block parsed, its notes added to ``dropped``; None where it cannot be parsed, ``unreadable`` noted."""
    try:
        block = parse(raw)
    except ValueError:
        dropped.append(unreadable)
        return None
    dropped.extend(block.notes)
    return block


def _mode_reason(mode: str) -> str:
    if mode.startswith(("I", "F")):
        return f"{mode} samples are 16-bit or wider"
    return f"colour mode {mode} is not supported"
