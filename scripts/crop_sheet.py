#!/usr/bin/env python3
"""Crop sheets: every face of the test set at 1:1, original | cloaked | amplified difference, per preset.

One PNG per photo in ``docs/crops/`` (``--out``): for each face, left to
right, a row per preset with three panels of the face box grown by 25% on
each side, at the photo's own resolution (never downscaled): the original,
the cloaked copy, and the difference amplified ``--gain`` times around
mid-grey (128 is unchanged; a change of 128 / gain levels or more saturates
to black or white). A face under 64 px gets a second row with the same
panels enlarged with nearest-neighbour, labelled as such.

The cloaks come from ``lowkeyd bench --crops DIR`` (``--cloaks DIR``: the
attack is not run twice) or, without it, from running each preset here,
as the pipeline would (a mode-L photo in luma alone):

    lowkeyd bench --presets default,strong --crops /tmp/cloaks
    .venv/bin/python scripts/crop_sheet.py --presets default,strong --cloaks /tmp/cloaks
    .venv/bin/python scripts/crop_sheet.py --presets default --set steps=3 --photos group.jpg,biden-crop112.png
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lowkeyd.engine.evaluate import JUDGE_GROW
from lowkeyd.engine.faces import Face
from lowkeyd.engine.measures import grown_box
from lowkeyd.engine.testset import FaceId, Subject
from lowkeyd.engine.transfer import SMALL_FACE_PX
from lowkeyd.errors import LowkeydError

OUT = Path(__file__).resolve().parent.parent / "docs" / "crops"
GAIN = 8
ENLARGE = 4  # the nearest-neighbour factor for faces under SMALL_FACE_PX
GAP, PAD, LINE = 6, 12, 20  # px between panels, around the sheet, per line of text
INK, PAPER = (0, 0, 0), (255, 255, 255)


@dataclass(frozen=True)
class Panel:
    """Where one panel sits on a sheet: ``kind`` is original, cloaked or difference; ``scale`` 1 is 1:1."""

    face: str
    preset: str
    kind: str
    x: int
    y: int
    width: int
    height: int
    scale: int


def difference(original: np.ndarray, cloaked: np.ndarray, gain: int = GAIN) -> np.ndarray:
    """The change amplified ``gain`` times around mid-grey, clipped to 0-255."""
    change = cloaked.astype(np.int16) - original.astype(np.int16)
    return np.clip(128 + gain * change, 0, 255).astype(np.uint8)


def sheet(
    subject: Subject,
    faces: Sequence[tuple[Face, FaceId]],
    cloaks: Mapping[str, np.ndarray],
    gain: int = GAIN,
) -> tuple[Image.Image, list[Panel]]:
    """One photo's sheet: a row per face and preset (``cloaks``: preset name -> cloaked photo), and where each panel went."""
    font = ImageFont.load_default(size=14)
    saturate = 128 // gain
    header = [
        f"{subject.name} ({subject.category}): face box + {100 * JUDGE_GROW:.0f}% per side",
        f"original | cloaked | difference x{gain} around mid-grey (128 = unchanged, +-{saturate} levels or more saturate)",
    ]
    rows: list[tuple[str, FaceId, str, list[tuple[str, np.ndarray]], int]] = []
    for face, fid in faces:
        xa, ya, xb, yb = grown_box(face.box, subject.rgb.shape, JUDGE_GROW)
        original = subject.rgb[ya:yb, xa:xb]
        for preset, cloaked_photo in cloaks.items():
            cloaked = cloaked_photo[ya:yb, xa:xb]
            panels = [("original", original), ("cloaked", cloaked), ("difference", difference(original, cloaked, gain))]
            label = f"{fid.name}, face {fid.index + 1} ({face.size:.0f} px), preset {preset}"
            rows.append((f"{label}: 1:1", fid, preset, panels, 1))
            if face.size < SMALL_FACE_PX:
                rows.append((f"{label}: enlarged x{ENLARGE}, nearest-neighbour (not 1:1)", fid, preset, panels, ENLARGE))
    width = max(
        [font.getbbox(line)[2] for line in header]
        + [max(font.getbbox(text)[2], sum(a.shape[1] * s for _, a in p) + GAP * (len(p) - 1)) for text, _, _, p, s in rows]
    ) + 2 * PAD
    height = PAD + LINE * len(header) + sum(GAP + LINE + p[0][1].shape[0] * s for _, _, _, p, s in rows) + PAD
    image = Image.new("RGB", (width, height), PAPER)
    draw = ImageDraw.Draw(image)
    y = PAD
    for line in header:
        draw.text((PAD, y), line, fill=INK, font=font)
        y += LINE
    placed = []
    for text, fid, preset, panels, scale in rows:
        y += GAP
        draw.text((PAD, y), text, fill=INK, font=font)
        y += LINE
        x = PAD
        for kind, pixels in panels:
            tile = Image.fromarray(pixels)
            if scale != 1:
                tile = tile.resize((tile.width * scale, tile.height * scale), Image.Resampling.NEAREST)
            image.paste(tile, (x, y))
            placed.append(Panel(fid.name, preset, kind, x, y, tile.width, tile.height, scale))
            x += tile.width + GAP
        y += panels[0][1].shape[0] * scale
    return image, placed


def main() -> int:
    from lowkeyd.cli.options import split_names
    from lowkeyd.engine.presets import parse_overrides
    from lowkeyd.engine.presets import get_preset
    from lowkeyd.testphotos import SETS, load_set

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="default,strong", help="comma-separated presets (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a preset setting")
    parser.add_argument("--photo-set", choices=SETS, default="varied")
    parser.add_argument("--photos", default="", help="comma-separated file names (default: every photo of the set)")
    parser.add_argument("--categories", default="", help="comma-separated categories (default: all)")
    parser.add_argument("--cloaks", type=Path, metavar="DIR", help="read the cloaks `lowkeyd bench --crops DIR` saved")
    parser.add_argument("--gain", type=int, default=GAIN, help="difference amplification (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=OUT, help="where the sheets go (default: %(default)s)")
    args = parser.parse_args()
    try:
        overrides = parse_overrides(args.overrides)
        presets = [get_preset(p, **overrides) for p in split_names(args.presets)]
        subjects = load_set(args.photo_set, split_names(args.photos), split_names(args.categories))
        written = make_sheets(subjects, presets, args.cloaks, args.gain, args.out)
    except LowkeydError as exc:
        print(f"crop_sheet: {exc}", file=sys.stderr)
        return 1
    print("\n".join(f"wrote {path}" for path in written))
    return 0


def make_sheets(subjects: Sequence[Subject], presets: Sequence, cloaks_dir: Path | None, gain: int, out: Path) -> list[Path]:
    """Cloak (or read the cloaks of) every subject with every preset and write one sheet per subject into ``out``."""
    from lowkeyd.engine.faces import FaceDetector

    cloaker = None
    if cloaks_dir is None:
        from lowkeyd.engine.cloak import Cloaker

        cloaker = Cloaker(presets[0])
    detector = cloaker.resident.detector if cloaker else FaceDetector()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for subject in subjects:
        cloaks = {}
        for preset in presets:
            if cloaker is None:
                cloaks[preset.name] = _saved_cloak(cloaks_dir / preset.name / f"{Path(subject.name).stem}.png", subject)
            else:
                cloaks[preset.name] = cloaker.with_preset(preset).cloak(subject.rgb, luma_only=subject.grayscale).rgb
        image, _ = sheet(subject, subject.assign(detector.detect(subject.rgb)), cloaks, gain)
        path = out / f"{Path(subject.name).stem}.png"
        image.save(path)
        written.append(path)
    return written


def _saved_cloak(path: Path, subject: Subject) -> np.ndarray:
    if not path.is_file():
        raise LowkeydError(f"no saved cloak {path}: run `lowkeyd bench --crops` with the same presets and photos")
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    if rgb.shape != subject.rgb.shape:
        raise LowkeydError(f"{path} is {rgb.shape[1]}x{rgb.shape[0]}, not the size of {subject.name}")
    return rgb


if __name__ == "__main__":
    sys.exit(main())
