#!/usr/bin/env python3
"""Build the varied test set from the bundled public-domain sample photos.

The five sample photos are colour portraits of three people with large faces;
a cloak tuned on them alone was tinted on black-and-white photos, striped on
video frames and refused on small faces. This script makes, by fixed and
documented transformations of those photos, the kinds of face a camera roll
also holds, and writes them with a manifest to ``lowkeyd/samples/varied/``:

- ``original``: the five photos as they are (referenced, not copied);
- ``grey_l``: black-and-white, stored as a one-channel (mode L) JPEG;
- ``grey_rgb``: black-and-white stored as RGB with R = G = B (lossless PNG:
  a JPEG's chroma rounding would make it not quite grey);
- ``crop112``: a tight crop of the face, about 112 px square, as face data
  sets and thumbnails hold them;
- ``small``: faces of 40-60 px in a larger frame;
- ``dim``: a dim, low-contrast exposure (levels squeezed into 25-120, gamma 1.3);
- ``q50``: a q50 4:2:0 JPEG of the photo, the blocky source a messenger makes;
- ``group``: three people side by side on one canvas.

Every transformation is deterministic (no random numbers), so running the
script again rebuilds byte-identical files; ``--check`` verifies that.
Faces are located with lowkeyd's own detector only to place crops.

    .venv/bin/python scripts/varied_set.py           # (re)build
    .venv/bin/python scripts/varied_set.py --check   # rebuild in memory, compare
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "lowkeyd" / "samples"
OUT = SAMPLES / "varied"
PEOPLE = {"obama.jpg": "obama", "obama2.jpg": "obama", "obama3.jpg": "obama", "biden.jpg": "biden", "astronaut.png": "astronaut"}


def _load(name: str) -> Image.Image:
    with Image.open(SAMPLES / name) as im:
        return im.convert("RGB")


def _face_box(image: Image.Image) -> tuple[float, float, float, float]:
    """The largest face's box in ``image`` (lowkeyd's own detector)."""
    from lowkeyd.engine.faces import FaceDetector

    faces = _detector(FaceDetector).detect(np.asarray(image))
    if not faces:
        raise SystemExit("varied_set: no face found in a sample photo; the detector or the photo changed")
    return tuple(float(v) for v in faces[0].box)


def _detector(cls, cache: dict = {}):  # noqa: B006 - one detector for the whole run
    if "d" not in cache:
        cache["d"] = cls()
    return cache["d"]


def _jpeg(image: Image.Image, quality: int, subsampling: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality, subsampling=subsampling, optimize=False)
    return buf.getvalue()


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", optimize=False, compress_level=9)
    return buf.getvalue()


def _fit(image: Image.Image, long_side: int) -> Image.Image:
    """``image`` with its long side at most ``long_side`` (Lanczos); the set stays small."""
    scale = long_side / max(image.size)
    if scale >= 1:
        return image
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)


def _grey(image: Image.Image) -> Image.Image:
    return image.convert("L")


def _square_crop(image: Image.Image, box: tuple[float, float, float, float], grow: float, size: int) -> Image.Image:
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1) * grow
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    # A little below the box centre: an aligned face crop holds the chin and some forehead.
    cy += 0.05 * side
    return image.resize((size, size), Image.LANCZOS, box=(cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))


def _scaled_to_face(image: Image.Image, box: tuple[float, float, float, float], face_px: float) -> Image.Image:
    """``image`` scaled so that its face box is ``face_px`` across."""
    scale = face_px / max(box[2] - box[0], box[3] - box[1])
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)


def _backdrop(size: tuple[int, int]) -> Image.Image:
    """A plain, softly lit wall: a frame for small or grouped faces that is itself no face."""
    w, h = size
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    light = 0.75 + 0.25 * np.cos((xs / w - 0.4) * np.pi) * np.cos((ys / h - 0.3) * np.pi)
    wall = np.stack([200 * light, 190 * light, 170 * light], -1)
    return Image.fromarray(np.clip(np.rint(wall), 0, 255).astype(np.uint8))


def _place(canvas: Image.Image, image: Image.Image, box: tuple[float, float, float, float], centre: tuple[int, int], span: float) -> None:
    """Paste the part of ``image`` around its face (``span`` face sizes across) so the face is at ``centre``."""
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half_w, top, bottom = span * side / 2, 1.0 * side, (span - 1.0) * side
    # Clipped to the photo: past its edge PIL would paste black bars.
    region = (max(0, round(cx - half_w)), max(0, round(cy - top)), min(image.width, round(cx + half_w)), min(image.height, round(cy + bottom)))
    part = image.crop(region)
    canvas.paste(part, (round(centre[0] - (cx - region[0])), round(centre[1] - (cy - region[1]))))


def _scene(
    size: tuple[int, int],
    images: dict[str, Image.Image],
    boxes: dict[str, tuple[float, float, float, float]],
    people: tuple[tuple[str, int, int], ...],
    y: int,
    span: float,
) -> Image.Image:
    """A plain wall with each ``(source, face_px, x)`` person's face scaled to ``face_px`` and centred at ``(x, y)``."""
    canvas = _backdrop(size)
    for source, face_px, x in people:
        scaled = _scaled_to_face(images[source], boxes[source], face_px)
        k = face_px / max(boxes[source][2] - boxes[source][0], boxes[source][3] - boxes[source][1])
        _place(canvas, scaled, tuple(v * k for v in boxes[source]), (x, y), span)
    return canvas


def build() -> dict[str, bytes]:
    """Every file of the set, by name, and the manifest as ``manifest.json``."""
    files: dict[str, bytes] = {}
    entries: list[dict[str, object]] = []

    def add(name: str, data: bytes | None, category: str, people: list[str], source: str, how: str) -> None:
        if data is not None:
            files[name] = data
        entries.append({"file": name, "category": category, "people": people, "source": source, "transform": how})

    for source, person in PEOPLE.items():
        add(f"../{source}", None, "original", [person], source, "as published")

    images = {name: _load(name) for name in PEOPLE}
    boxes = {name: _face_box(im) for name, im in images.items()}

    for source in ("obama.jpg", "biden.jpg"):
        stem = Path(source).stem
        add(f"{stem}-grey-l.jpg", _jpeg(_grey(_fit(images[source], 1080)), 92, 0), "grey_l", [PEOPLE[source]], source,
            "long side 1080, luma (ITU-R 601), one-channel JPEG q92")
    for source in ("obama2.jpg", "astronaut.png"):
        stem = Path(source).stem
        grey = _grey(_fit(images[source], 1080)).convert("RGB")
        add(f"{stem}-grey-rgb.png", _png(grey), "grey_rgb", [PEOPLE[source]], source,
            "long side 1080, luma copied into R, G and B, PNG")
    for source in ("obama3.jpg", "biden.jpg"):
        stem = Path(source).stem
        crop = _square_crop(images[source], boxes[source], 1.3, 112)
        add(f"{stem}-crop112.png", _png(crop), "crop112", [PEOPLE[source]], source,
            "square of 1.3 face boxes round the face, resized to 112x112 (Lanczos), PNG")

    # Small faces: each person at a different size (42, 50, 58 px) on one wide frame.
    canvas = _scene((1280, 720), images, boxes, (("obama.jpg", 42, 320), ("biden.jpg", 50, 640), ("astronaut.png", 58, 960)), 330, 3.0)
    add("small-faces.jpg", _jpeg(canvas, 92, 2), "small", ["obama", "biden", "astronaut"], "obama.jpg, biden.jpg, astronaut.png",
        "faces scaled to 42, 50 and 58 px, pasted left to right on a 1280x720 plain wall, JPEG q92")

    for source in ("obama3.jpg", "astronaut.png"):
        stem = Path(source).stem
        pixels = np.asarray(_fit(images[source], 1080)).astype(np.float32) / 255
        dim = 25 + 95 * pixels**1.3
        add(f"{stem}-dim.jpg", _jpeg(Image.fromarray(np.rint(dim).astype(np.uint8)), 92, 2), "dim", [PEOPLE[source]], source,
            "long side 1080, levels 25 + 95 * x^1.3 (dim, low contrast), JPEG q92")
    for source in ("obama2.jpg", "biden.jpg"):
        stem = Path(source).stem
        add(f"{stem}-q50.jpg", _jpeg(_fit(images[source], 1080), 50, 2), "q50", [PEOPLE[source]], source,
            "long side 1080, JPEG q50 4:2:0")

    # A group: three people at 130-170 px faces, left to right.
    canvas = _scene((1500, 800), images, boxes, (("obama2.jpg", 150, 280), ("biden.jpg", 130, 750), ("astronaut.png", 170, 1220)), 300, 2.6)
    add("group.jpg", _jpeg(canvas, 92, 2), "group", ["obama", "biden", "astronaut"], "obama2.jpg, biden.jpg, astronaut.png",
        "faces scaled to 150, 130 and 170 px, pasted left to right on a 1500x800 plain wall, JPEG q92")

    manifest = {
        "about": "lowkeyd's varied test set: made from the public-domain sample photos by scripts/varied_set.py; "
        "'people' lists who is in a photo, left to right",
        "photos": entries,
    }
    files["manifest.json"] = (json.dumps(manifest, indent=1) + "\n").encode()
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="rebuild in memory and compare with the files on disk")
    args = parser.parse_args()
    files = build()
    if args.check:
        stale = [n for n, data in files.items() if not (OUT / n).is_file() or (OUT / n).read_bytes() != data]
        for name in stale:
            print(f"varied_set: {name} differs from what the script builds", file=sys.stderr)
        return 1 if stale else 0
    OUT.mkdir(exist_ok=True)
    for name, data in files.items():
        (OUT / name).write_bytes(data)
    print(f"varied_set: wrote {len(files)} files to {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
