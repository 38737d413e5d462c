"""Print issue 11's table for the third-party test photos: what a cloaked copy keeps, drops and changes.

For each file in lowkeyd/samples/cameras, a block in the middle of the photo (a stand-in for
a face) is changed by a cloak-sized perturbation (+-8 levels) and the photo written as the
daemon writes it (GPS stripped). The row says:

* tags in / out: ``exiftool -a -G1`` tags of source and output (file facts left out);
* removed: the tags gone from the output, and what lowkeyd announced it leaves out;
* warnings: ``exiftool -validate -warning`` counts, source -> output;
* size: output bytes / source bytes;
* max change outside: the largest change of an 8-bit pixel outside the cloaked block, widened
  to whole JPEG MCUs for a JPEG and to 16 pixels around it for HEIC/AVIF/WebP; for a source
  deeper than 8 bits also in its own sample units. For a JPEG also how many 8x8 DCT blocks
  differ from the source's, per component: only those of the cloaked MCUs may. (A decoder's
  smooth chroma upsampling lets a changed 4:2:0 or 4:2:2 chroma block move the pixels just
  across the MCU border by a level or two, though their own blocks are the source's.)

    PYTHONPATH=. .venv/bin/python scripts/photo_table.py [--markdown]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jpeglib
import numpy as np

from lowkeyd.errors import PhotoError
from lowkeyd.photo import encode_photo, read_photo
from lowkeyd.photo.containers import SOF_MARKERS, jpeg_layout
from lowkeyd.photo.model import Photo
from lowkeyd.photo.orientation import TO_STORED, TO_UPRIGHT, transpose_array

CAMERAS = Path(__file__).resolve().parent.parent / "lowkeyd" / "samples" / "cameras"
_FILE_FACTS = {"System", "File", "ExifTool", "Composite"}
_LOSSY_MARGIN = 16


def tags(path: Path) -> dict[str, object]:
    out = subprocess.run(["exiftool", "-j", "-a", "-G1", str(path)], capture_output=True, text=True, check=True)
    facts = json.loads(out.stdout)[0]
    return {k: v for k, v in facts.items() if k != "SourceFile" and k.split(":")[0] not in _FILE_FACTS}


def warning_count(path: Path) -> int:
    out = subprocess.run(["exiftool", "-validate", "-warning", "-a", "-s3", str(path)], capture_output=True, text=True, check=True)
    return sum(1 for line in out.stdout.splitlines() if not line[:1].isdigit() and line != "OK")


def cloaked(photo: Photo) -> tuple[np.ndarray, np.ndarray]:
    """(cloaked 8-bit pixels, mask of the changed block), upright."""
    h, w = photo.rgb.shape[:2]
    block = (slice(h // 3, max(h // 3 + 1, 2 * h // 3)), slice(w // 3, max(w // 3 + 1, 2 * w // 3)))
    noise = np.random.default_rng(0).integers(-8, 9, photo.rgb[block].shape)
    rgb = photo.rgb.copy()
    rgb[block] = np.clip(rgb[block].astype(int) + noise, 0, 255)
    mask = np.zeros((h, w), bool)
    mask[block] = True
    return rgb, mask


def widened(photo: Photo, mask: np.ndarray) -> np.ndarray:
    """The mask grown to what the format may change: whole MCUs (JPEG), a margin (lossy), nothing (lossless)."""
    if photo.format in ("PNG", "TIFF") or (photo.format == "WEBP" and photo.encoding.lossless):
        return mask
    if photo.format != "JPEG":
        rows, cols = np.nonzero(mask)
        grown = np.zeros_like(mask)
        grown[max(0, rows.min() - _LOSSY_MARGIN) : rows.max() + _LOSSY_MARGIN + 1,
              max(0, cols.min() - _LOSSY_MARGIN) : cols.max() + _LOSSY_MARGIN + 1] = True
        return grown
    frame = next(p for m, p in jpeg_layout(photo.source_bytes).segments if m in SOF_MARKERS)
    factors = [(frame[7 + 3 * i] & 15, frame[7 + 3 * i] >> 4) for i in range(frame[5])]  # (v, h)
    mcu = (8 * max(v for v, _ in factors), 8 * max(h for _, h in factors))
    stored = transpose_array(mask, TO_STORED.get(photo.orientation))
    rows = -stored.shape[0] % mcu[0]
    cols = -stored.shape[1] % mcu[1]
    padded = np.pad(stored, ((0, rows), (0, cols)))
    grid = padded.reshape(padded.shape[0] // mcu[0], mcu[0], padded.shape[1] // mcu[1], mcu[1]).any(axis=(1, 3))
    blocks = np.repeat(np.repeat(grid, mcu[0], axis=0), mcu[1], axis=1)[: stored.shape[0], : stored.shape[1]]
    return transpose_array(blocks, TO_UPRIGHT.get(photo.orientation))


def changed_blocks(source: bytes, output: bytes, folder: Path) -> str:
    """How many 8x8 DCT blocks of a JPEG differ from the source's, per component (the cloaked MCUs' blocks only)."""
    counts = []
    decoded = []
    for name, data in (("a.jpg", source), ("b.jpg", output)):
        (folder / name).write_bytes(data)
        jpeg = jpeglib.read_dct(str(folder / name))
        jpeg.load()
        decoded.append([jpeg.Y] + ([jpeg.Cb, jpeg.Cr] if jpeg.has_chrominance else []) + ([jpeg.K] if jpeg.has_black else []))
    for before, after in zip(*decoded, strict=True):
        counts.append(f"{int((before != after).any(axis=(2, 3)).sum())}/{before.shape[0] * before.shape[1]}")
    return " ".join(counts)


def row(path: Path, folder: Path, exiftool: bool) -> list[str]:
    try:
        photo = read_photo(path)
    except PhotoError as exc:
        return [path.name, "refused", "", "", str(exc).split(": ", 1)[-1], "", "", ""]
    rgb, mask = cloaked(photo)
    data = encode_photo(photo, rgb)  # untagged, as mark_published (off) leaves it
    output = folder / path.name
    output.write_bytes(data)
    out = read_photo(data)
    outside = ~widened(photo, mask)
    change = int(np.abs(out.rgb.astype(int) - photo.rgb)[outside].max()) if outside.any() else 0
    shown = str(change)
    if photo.samples is not None and out.samples is not None and photo.bit_depth > 8:
        deep = int(np.abs(out.samples.array.astype(int) - photo.samples.array)[outside].max())
        shown += f" ({deep} at {photo.bit_depth} bits)"
    drops = "; ".join(photo.drops(strip_gps=True)) or "-"
    tags_in = tags_out = warnings = "n/a"
    removed = drops
    if exiftool:
        before, after = tags(path), tags(output)
        gone = sorted(before.keys() - after.keys())
        tags_in, tags_out = str(len(before)), str(len(after))
        warnings = f"{warning_count(path)} -> {warning_count(output)}"
        removed = f"{len(gone)} tags ({', '.join(gone[:6])}{', ...' if len(gone) > 6 else ''}); said: {drops}"
    if photo.format == "JPEG":
        shown += f"; DCT blocks changed {changed_blocks(photo.source_bytes, data, folder)}"
    ratio = f"{len(data) / len(photo.source_bytes):.2f}"
    return [path.name, f"{photo.format} {photo.bit_depth}-bit", tags_in, tags_out, removed, warnings, ratio, shown]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="photos (default: every file in lowkeyd/samples/cameras)")
    args = parser.parse_args()
    files = args.files or sorted(p for p in CAMERAS.iterdir() if p.suffix.lower() != ".md")
    exiftool = shutil.which("exiftool") is not None
    if not exiftool:
        print("exiftool is not installed: tag counts and warnings are left out", file=sys.stderr)
    header = ["file", "format", "tags in", "tags out", "removed", "warnings before -> after", "size ratio",
              "max change outside the cloaked blocks"]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    with tempfile.TemporaryDirectory(prefix="lowkeyd-table-") as folder:
        for path in files:
            print("| " + " | ".join(row(path, Path(folder), exiftool)) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
