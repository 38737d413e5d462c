"""The photo formats lowkeyd reads and writes: their codecs, and the file extensions that go with them."""

from __future__ import annotations

from pathlib import PurePath

from lowkeyd.photo import avif, heif, jpeg, png, tiff, webp
from lowkeyd.photo.codec import Codec

# In the order Pillow tries them. HEIF comes before AVIF: both plugins accept the generic "mif1" brand.
CODECS: tuple[Codec, ...] = (jpeg.CODEC, png.CODEC, heif.CODEC, webp.CODEC, avif.CODEC, tiff.CODEC)
# The formats Pillow may open a photo as.
OPEN_FORMATS = tuple(codec.name for codec in CODECS)
PHOTO_EXTENSIONS = frozenset(ext for codec in CODECS for ext in codec.extensions)
SUPPORTED_LIST = ", ".join(codec.label for codec in CODECS[:-1]) + f" and {CODECS[-1].label}"
_BY_NAME = {name: codec for codec in CODECS for name in (codec.name, *codec.aliases)}


def codec_for(pillow_format: str) -> Codec:
    """The codec of a format as Pillow names it (an opened image's ``format``, or :attr:`Photo.format`)."""
    return _BY_NAME[pillow_format]


def is_photo_path(path: PurePath | str) -> bool:
    """True for a file name lowkeyd would cloak, judged by its extension alone (for watchers).

    Hidden files are not photos: they are editors' and sync clients' scratch files, macOS
    "._" resource forks, and lowkeyd's own temporary files.
    """
    path = PurePath(path)
    return not path.name.startswith(".") and path.suffix.lower() in PHOTO_EXTENSIONS
