"""``lowkeyd bench``: presets side by side on the bundled sample photos.

``--holdout`` (the headline figure): for each preset, leave-one-out over every
recogniser lowkeyd runs: each fold attacks without one of them and judges with
that one alone, self-match and cross-photo, plain and after the social
pipeline; every fold is shown, then the mean and the worst fold.

Without it, for each preset in one run on one machine: seconds per face,
protection against dlib (the photo against its own cloaked copy, plain and
after the social pipeline, and cross-photo: a cloaked photo against the clean
other photos of the same person), face-region LPIPS, whole-photo PSNR, and
each preset's speed relative to ``paper``. When dlib's torch port is an attack
member, that dlib column is white-box: only ``--holdout`` says what transfers.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from lowkeyd.cli.options import add_engine_options, parse_overrides
from lowkeyd.errors import LowkeydError

# The bundled photos and who is in them (public-domain; see samples/SOURCES.md).
SAMPLES = {"obama.jpg": "obama", "obama2.jpg": "obama", "obama3.jpg": "obama", "biden.jpg": "biden", "astronaut.png": "astronaut"}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="compare attack presets on the bundled sample photos", description=__doc__)
    p.add_argument("--presets", default="paper,default", help="comma-separated presets (default: %(default)s)")
    p.add_argument("--photos", default=",".join(SAMPLES), help="comma-separated sample photos (default: all five)")
    p.add_argument(
        "--holdout",
        action="store_true",
        help="leave-one-out transfer: attack without each recogniser in turn, judge with the one left out",
    )
    p.add_argument("--folds", help="with --holdout: comma-separated recognisers to hold out (default: every one)")
    p.add_argument("--json", type=Path, metavar="FILE", help="with --holdout: also write every fold's figures here")
    p.add_argument("--crops", type=Path, metavar="DIR", help="save 1:1 face crops (original and each preset) here")
    p.add_argument(
        "--megapixels",
        action="store_true",
        help="also time one face in a 12 MP upscale of obama.jpg against the original (full step count, warm)",
    )
    add_engine_options(p)
    p.set_defaults(func=run)


@dataclass
class PresetRun:
    name: str
    seconds_per_face: list[float] = field(default_factory=list)
    self_distance: list[float] = field(default_factory=list)
    social_distance: list[float] = field(default_factory=list)
    cross_distance: list[float] = field(default_factory=list)
    lpips: list[float] = field(default_factory=list)
    psnr: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    scaling: float | None = None


def _sample(name: str) -> np.ndarray:
    with Image.open(files("lowkeyd") / "samples" / name) as im:
        return np.asarray(im.convert("RGB"))


def _dlib_distance(check) -> float:
    # A face that is not even found again cannot be matched: count it as infinitely far.
    return check.scores["dlib"] if check.found else math.inf


def _bench_preset(cloaker, args: argparse.Namespace, photos: dict[str, np.ndarray], console: Console) -> PresetRun:
    from lowkeyd.engine.evaluate import Evaluator

    evaluator = Evaluator(cloaker.resident)
    run = PresetRun(cloaker.preset.name)
    probes: dict[str, dict[str, np.ndarray] | None] = {}  # each cloaked photo's largest face, as compare() found it
    for photo, rgb in photos.items():
        start = time.perf_counter()
        result = cloaker.cloak(rgb)
        elapsed = time.perf_counter() - start
        if result.cloaked:
            run.seconds_per_face.append(elapsed / result.cloaked)
            run.steps.extend(f.steps for f in result.faces if f.status == "cloaked")
        plain = evaluator.compare(rgb, result.rgb)
        probes[photo] = plain.probe
        social = evaluator.compare(rgb, result.rgb, social=True)
        run.self_distance.extend(_dlib_distance(f) for f in plain.faces)
        run.social_distance.extend(_dlib_distance(f) for f in social.faces)
        run.lpips.extend(f.lpips for f in plain.faces if f.lpips is not None)
        run.psnr.append(plain.psnr)
        console.print(
            f"  {run.name:>10} {photo:>14}: {elapsed:6.1f} s, dlib {min(map(_dlib_distance, plain.faces), default=0):.3f} "
            f"(social {min(map(_dlib_distance, social.faces), default=0):.3f}), LPIPS {plain.faces[0].lpips if plain.faces else 0:.4f}, "
            f"PSNR {plain.psnr:.1f} dB",
            highlight=False,
        )
        if args.crops:
            _save_crop(args.crops, photo, run.name, rgb, result.rgb, plain.faces)
    clean = {photo: evaluator.largest_face(rgb) for photo, rgb in photos.items()}
    for photo in photos:
        probe = probes[photo]
        for other in photos:
            if other != photo and SAMPLES.get(other) == SAMPLES.get(photo) and clean[other]:
                run.cross_distance.append(math.inf if probe is None else evaluator.match(probe, clean[other])[0]["dlib"])
    if args.megapixels:
        run.scaling = _scaling(cloaker)
    return run


def _save_crop(folder: Path, photo: str, preset: str, original: np.ndarray, cloaked: np.ndarray, faces) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    stem = Path(photo).stem
    for i, face in enumerate(faces):
        x1, y1, x2, y2 = (int(v) for v in face.box)
        Image.fromarray(original[y1:y2, x1:x2]).save(folder / f"{stem}-{i}-original.png")
        Image.fromarray(cloaked[y1:y2, x1:x2]).save(folder / f"{stem}-{i}-{preset}.png")


def _scaling(cloaker) -> float:
    """Time for one face in a 12 MP photo over the same face in the ~1 MP original.

    Both run the preset's full step count (early stop off) after a warm-up run:
    the upscaled face is not bit-identical once downscaled again, and a step more
    or less would swamp what is measured here, the cost that grows with pixels.
    """
    fixed = cloaker.with_preset(cloaker.preset.model_copy(update={"target": None}))
    small = _sample("obama.jpg")
    factor = (12e6 / (small.shape[0] * small.shape[1])) ** 0.5
    big = np.asarray(Image.fromarray(small).resize((round(small.shape[1] * factor), round(small.shape[0] * factor)), Image.Resampling.BICUBIC))
    times = []
    for rgb in (small, big):
        fixed.cloak(rgb)
        start = time.perf_counter()
        fixed.cloak(rgb)
        times.append(time.perf_counter() - start)
    return times[1] / times[0]


def run(args: argparse.Namespace) -> int:
    from lowkeyd.engine.cloak import Cloaker
    from lowkeyd.engine.presets import get_preset

    # The table is wide: keep it whole when the output goes to a file or a pipe.
    console = Console(width=None if sys.stdout.isatty() else 200)
    names = [p.strip() for p in args.photos.split(",") if p.strip()]
    unknown = [n for n in names if n not in SAMPLES]
    if unknown:
        raise LowkeydError(f"unknown sample photo {unknown[0]!r} (choose from {', '.join(SAMPLES)})")
    photos = {n: _sample(n) for n in names}
    overrides = parse_overrides(args.overrides)
    presets = [get_preset(p.strip(), **overrides) for p in args.presets.split(",") if p.strip()]
    with console.status("loading the face models..."):
        # One resident set of models for every preset (and every fold).
        base = Cloaker(presets[0], args.device)
    if args.holdout:
        return _run_holdout(base, presets, photos, args, console)
    runs = []
    for preset in presets:
        console.print(f"[bold]{preset.name}[/]")
        runs.append(_bench_preset(base.with_preset(preset), args, photos, console))
    _print_runs(runs, photos, console)
    return 0


def _print_runs(runs: list[PresetRun], photos: dict[str, np.ndarray], console: Console) -> None:
    paper = next((r for r in runs if r.name == "paper"), None)
    table = Table(title=f"lowkeyd bench: {len(photos)} photos, judged by dlib (match if L2 <= 0.6)")
    for column in (
        "preset", "s/face", "steps", "self protected", "social protected", "cross protected",
        "dlib self", "dlib social", "LPIPS face", "PSNR dB", "speed vs paper",
    ):
        table.add_column(column, justify="right")
    for r in runs:
        mean_time = statistics.mean(r.seconds_per_face) if r.seconds_per_face else float("nan")
        speed = statistics.mean(paper.seconds_per_face) / mean_time if paper and paper.seconds_per_face else None
        table.add_row(
            r.name,
            f"{mean_time:.1f}",
            f"{statistics.mean(r.steps):.0f}" if r.steps else "-",
            _rate(r.self_distance),
            _rate(r.social_distance),
            _rate(r.cross_distance),
            _finite_mean(r.self_distance),
            _finite_mean(r.social_distance),
            f"{statistics.mean(r.lpips):.4f}" if r.lpips else "-",
            f"{statistics.mean(r.psnr):.1f}" if r.psnr else "-",
            "-" if speed is None else f"{speed:.1f}x",
        )
    console.print(table)
    for r in runs:
        if r.scaling is not None:
            console.print(f"{r.name}: one face in a 12 MP photo takes {r.scaling:.2f}x the time of the ~1 MP original", highlight=False)


def _run_holdout(base, presets, photos: dict[str, np.ndarray], args: argparse.Namespace, console: Console) -> int:
    from lowkeyd.engine.holdout import Subject, holdout

    subjects = [Subject(n, rgb, SAMPLES[n]) for n, rgb in photos.items()]
    folds = [f.strip() for f in args.folds.split(",")] if args.folds else None
    report = {}
    for preset in presets:
        console.print(f"[bold]{preset.name}[/]")
        results = holdout(base.with_preset(preset), subjects, heldout=folds, progress=lambda line: console.print("  " + line, highlight=False))
        report[preset.name] = [f.summary() for f in results]
        table = Table(title=f"{preset.name}: leave-one-out on {len(photos)} photos (protected = the held-out recogniser does not match)")
        for column in (
            "held out", "attacked with", "self", "self social", "cross", "cross social",
            "margin social", "LPIPS face", "steps", "s/face",
        ):
            table.add_column(column, justify="right")
        rows = report[preset.name]
        for row in rows:
            table.add_row(*_holdout_cells(row))
        if len(rows) > 1:
            for label, pick in (("mean", statistics.mean), ("worst fold", min)):
                agg = {k: pick([r[k] for r in rows]) for k in _HOLDOUT_KEYS}
                table.add_row(*_holdout_cells({"heldout": label, "members": [], **agg}))
        console.print(table)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
        console.print(f"wrote {args.json}", highlight=False)
    return 0


_HOLDOUT_KEYS = ("self_plain", "self_social", "cross_plain", "cross_social", "margin_social", "lpips", "steps", "seconds_per_face")


def _holdout_cells(row: dict) -> list[str]:
    def pct(v: float) -> str:
        return "-" if math.isnan(v) else f"{100 * v:.0f}%"

    return [
        row["heldout"],
        ", ".join(row["members"]),
        pct(row["self_plain"]),
        pct(row["self_social"]),
        pct(row["cross_plain"]),
        pct(row["cross_social"]),
        f"{row['margin_social']:+.3f}",
        f"{row['lpips']:.4f}",
        f"{row['steps']:.0f}",
        f"{row['seconds_per_face']:.1f}",
    ]


def _rate(distances: list[float]) -> str:
    return f"{sum(d > 0.6 for d in distances)}/{len(distances)}"


def _finite_mean(distances: list[float]) -> str:
    finite = [d for d in distances if d != float("inf")]
    return f"{statistics.mean(finite):.3f}" if finite else "-"
