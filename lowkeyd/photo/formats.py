"""The photo formats lowkeyd reads and writes, and the file extensions that go with them."""

from __future__ import annotations

from pathlib import PurePath

# Pillow format name -> extensions (lower case) a file of that format may carry.
EXTENSIONS: dict[str, tuple[str, ...]] = {
    "JPEG": (".jpg", ".jpeg", ".jpe", ".jfif"),
    "PNG": (".png",),
    "WEBP": (".webp",),
    "HEIF": (".heic", ".heif", ".hif"),
    "AVIF": (".avif",),
    "TIFF": (".tif", ".tiff"),
}
PHOTO_EXTENSIONS = frozenset(ext for exts in EXTENSIONS.values() for ext in exts)
# Human names for messages.
LABELS = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP", "HEIF": "HEIC/HEIF", "AVIF": "AVIF", "TIFF": "TIFF"}
SUPPORTED_LIST = "JPEG, PNG, HEIC/HEIF, WebP, AVIF and TIFF"


def is_photo_path(path: PurePath | str) -> bool:
    """True for a file name lowkeyd would cloak, judged by its extension alone (for watchers).

    Hidden files are not photos: they are editors' and sync clients' scratch files, macOS
    "._" resource forks, and lowkeyd's own temporary files.
    """
    path = PurePath(path)
    return not path.name.startswith(".") and path.suffix.lower() in PHOTO_EXTENSIONS
