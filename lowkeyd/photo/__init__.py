"""The photo layer: read a photo file into upright pixels, write cloaked pixels back as the same photo.

It never imports torch or the engine. Public API::

    photo = read_photo(path_or_bytes, max_pixels=None)   # PhotoError on any bad input
    write_photo(photo, cloaked_rgb, dest, strip_gps=True, marker={"version": ..., "preset": ...})
    data = encode_photo(photo, cloaked_rgb, strip_gps=True, marker={...})   # same bytes, no file
    write_bytes(photo, data, dest)                       # write encoded bytes like write_photo
    is_photo_path(path)                                  # by extension, for watchers
"""

from lowkeyd.photo.decode import DEFAULT_MAX_PIXELS, read_photo
from lowkeyd.photo.encode import encode_photo, write_bytes, write_photo
from lowkeyd.photo.formats import PHOTO_EXTENSIONS, is_photo_path
from lowkeyd.photo.model import Photo
from lowkeyd.photo.xmp import MARKER_NS

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MARKER_NS",
    "PHOTO_EXTENSIONS",
    "Photo",
    "encode_photo",
    "is_photo_path",
    "read_photo",
    "write_bytes",
    "write_photo",
]
