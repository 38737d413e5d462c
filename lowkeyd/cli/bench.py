"""``lowkeyd bench``: presets side by side on the bundled test photos.

The photos are the varied test set by default (``--photo-set varied``: the
five sample photos and black-and-white, 112 px, small, dim, q50 and group
variants of them; see ``lowkeyd/testphotos.py``), or the five sample
photos alone (``--photo-set samples``); ``--photos`` and ``--categories``
pick a subset.

``--holdout`` (the headline figure): for each preset, leave-one-out over every
recogniser lowkeyd runs: each fold attacks without one of them and judges with
that one alone, face by face, self-match and cross-photo (against the person's
faces made from other source photos), plain and after the social pipeline.
Each fold gets a table per category and overall, every rate with its n and a
Wilson 95% interval, and the visibility of the worst face for each measure;
then the folds side by side. ``--json`` writes every fold's and every face's
figures (``scripts/transfer_figures.py`` turns them into ``transfer.json``).

Without it, for each preset in one run on one machine: seconds per face,
protection against dlib (the photo against its own cloaked copy, plain and
after the social pipeline, and cross-photo: a cloaked photo against the clean
photos of the same person from other sources), face-region LPIPS, whole-photo
PSNR, and each preset's speed relative to ``paper``. When dlib's torch port is
an attack member, that dlib column is white-box: only ``--holdout`` says what
transfers. ``--crops DIR`` saves each cloaked photo for
``scripts/crop_sheet.py``.
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

from lowkeyd.cli.options import add_engine_options, split_names
from lowkeyd.engine.presets import parse_overrides
from lowkeyd.errors import LowkeydError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="compare attack presets on the bundled test photos", description=__doc__)
    p.add_argument("--presets", default="paper,default", help="comma-separated presets (default: %(default)s)")
    p.add_argument(
        "--photo-set", choices=("varied", "samples"), default="varied",
        help="the varied test set or the five sample photos (default: %(default)s)",
    )
    p.add_argument("--photos", help="comma-separated file names of the set's photos to run (default: all)")
    p.add_argument("--categories", help="comma-separated categories of the varied set to run, e.g. grey_rgb,small")
    p.add_argument(
        "--holdout",
        action="store_true",
        help="leave-one-out transfer: attack without each recogniser in turn, judge with the one left out",
    )
    p.add_argument("--folds", help="with --holdout: comma-separated recognisers to hold out (default: every one)")
    p.add_argument("--json", type=Path, metavar="FILE", help="with --holdout: also write every fold's and face's figures here")
    p.add_argument(
        "--crops", type=Path, metavar="DIR",
        help="without --holdout: save each cloaked photo as DIR/PRESET/PHOTO.png (for scripts/crop_sheet.py)",
    )
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
    with (files("lowkeyd") / "samples" / name).open("rb") as fh, Image.open(fh) as im:
        return np.asarray(im.convert("RGB"))


def _dlib_distance(check) -> float:
    # A face that is not even found again cannot be matched: count it as infinitely far.
    return check.scores["dlib"] if check.found else math.inf


def _bench_preset(cloaker, args: argparse.Namespace, subjects: list, console: Console) -> PresetRun:
    from lowkeyd.engine.evaluate import Evaluator

    evaluator = Evaluator(cloaker.resident)
    run = PresetRun(cloaker.preset.name)
    probes: dict[str, dict[str, np.ndarray] | None] = {}  # each cloaked photo's largest face, as compare() found it
    for subject in subjects:
        start = time.perf_counter()
        result = cloaker.cloak(subject.rgb, luma_only=subject.grayscale)
        elapsed = time.perf_counter() - start
        if result.cloaked:
            run.seconds_per_face.append(elapsed / result.cloaked)
            run.steps.extend(f.steps for f in result.faces if f.status == "cloaked")
        plain = evaluator.compare(subject.rgb, result.rgb)
        probes[subject.name] = plain.probe
        social = evaluator.compare(subject.rgb, result.rgb, social=True)
        run.self_distance.extend(_dlib_distance(f) for f in plain.faces)
        run.social_distance.extend(_dlib_distance(f) for f in social.faces)
        run.lpips.extend(f.lpips for f in plain.faces if f.lpips is not None)
        run.psnr.append(plain.psnr)
        console.print(
            f"  {run.name:>10} {subject.name:>22}: {elapsed:6.1f} s, dlib {min(map(_dlib_distance, plain.faces), default=0):.3f} "
            f"(social {min(map(_dlib_distance, social.faces), default=0):.3f}), LPIPS {plain.faces[0].lpips if plain.faces else 0:.4f}, "
            f"PSNR {plain.psnr:.1f} dB",
            highlight=False,
        )
        if args.crops:
            folder = args.crops / run.name
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(result.rgb).save(folder / f"{Path(subject.name).stem}.png")
    # Cross-photo on photos of one person: the largest face is theirs. Groups are for --holdout, which goes face by face.
    single = [s for s in subjects if len(s.people) == 1]
    clean = {s.name: evaluator.largest_face(s.rgb) for s in single}
    for subject in single:
        probe = probes[subject.name]
        for other in single:
            seen = clean[other.name]
            if other.people == subject.people and other.sources != subject.sources and seen:
                run.cross_distance.append(math.inf if probe is None else evaluator.match(probe, seen)[0]["dlib"])
    if args.megapixels:
        run.scaling = _scaling(cloaker)
    return run


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
    from lowkeyd.testphotos import load_set

    # The table is wide: keep it whole when the output goes to a file or a pipe.
    console = Console(width=None if sys.stdout.isatty() else 200)
    if args.crops and args.holdout:
        raise LowkeydError("--crops saves the cloaks of the whole ensemble: run it without --holdout")
    subjects = load_set(args.photo_set, split_names(args.photos), split_names(args.categories))
    overrides = parse_overrides(args.overrides)
    presets = [get_preset(p, **overrides) for p in split_names(args.presets)]
    if not presets:
        raise LowkeydError("--presets names no preset")
    with console.status("loading the face models..."):
        # One resident set of models for every preset (and every fold).
        base = Cloaker(presets[0], args.device)
    if args.holdout:
        return _run_holdout(base, presets, subjects, args, console)
    runs = []
    for preset in presets:
        console.print(f"[bold]{preset.name}[/]")
        runs.append(_bench_preset(base.with_preset(preset), args, subjects, console))
    _print_runs(runs, len(subjects), console)
    return 0


def _print_runs(runs: list[PresetRun], photos: int, console: Console) -> None:
    paper = next((r for r in runs if r.name == "paper"), None)
    table = Table(title=f"lowkeyd bench: {photos} photos, judged by dlib (match if L2 <= 0.6)")
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


def _run_holdout(base, presets, subjects: list, args: argparse.Namespace, console: Console) -> int:
    from lowkeyd.engine.holdout import holdout
    from lowkeyd.testphotos import load_set
    from lowkeyd.engine.transfer import preset_hash

    folds = split_names(args.folds) or None
    # A run on some photos still matches each cloaked face against every clean photo of the set.
    gallery = load_set(args.photo_set) if args.photos or args.categories else subjects
    by_preset: dict[str, dict[str, object]] = {}
    report = {
        "set": args.photo_set,
        "subset": bool(args.photos or args.categories),
        "photos": [s.name for s in subjects],
        "presets": by_preset,
    }
    for preset in presets:
        console.print(f"[bold]{preset.name}[/]")
        results = holdout(base.with_preset(preset), subjects, heldout=folds, gallery=gallery, progress=lambda line: console.print("  " + line, highlight=False))
        for fold in results:
            _print_fold(preset.name, fold, console)
        if len(results) > 1:
            _print_folds(preset.name, results, console)
        by_preset[preset.name] = {
            "preset_hash": preset_hash(preset),
            "settings": preset.model_dump(mode="json"),
            "folds": [f.summary() for f in results],
        }
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
        console.print(f"wrote {args.json}", highlight=False)
    return 0


def _print_fold(preset: str, fold, console: Console) -> None:
    """One fold: a row per category and one for every face, then the worst face by each measure."""
    table = Table(
        title=f"{preset}, {fold.heldout} held out (attacked with {', '.join(fold.members)}): protected = {fold.heldout} "
        "does not match; rates as % [Wilson 95%] n (faces, or face/photo pairs for cross)",
        title_justify="left",
    )
    for column in (
        "category", "faces", "self", "self social", "cross", "cross social", "worst margin social",
        "LPIPS mean/max", "judge LPIPS mean/max", "p99.9 max", "PSNR min", "grey: colour max",
    ):
        table.add_column(column, justify="right")
    for category in [*fold.categories(), None]:
        g = fold.group(category)
        table.add_row(
            category or "[bold]all[/]", str(g.faces), str(g.self_plain), str(g.self_social), str(g.cross_plain),
            str(g.cross_social), _value(g.worst_margin, "{:+.3f}"), f"{g.lpips_mean:.4f} / {_value(g.lpips, '{:.4f}')}",
            f"{g.judge_lpips_mean:.4f} / {_value(g.judge_lpips, '{:.4f}')}", _value(g.changed_p999, "{:.0f}"),
            _value(g.psnr, "{:.1f}"), _value(g.added_colour, "{:.0f}"),
        )
    console.print(table)
    g = fold.group()
    worst = [
        ("smallest margin after social", g.worst_margin, "{:+.3f}"),
        ("face LPIPS", g.lpips, "{:.4f}"),
        ("judge LPIPS (box + 25%)", g.judge_lpips, "{:.4f}"),
        ("99.9th pct of changed pixels", g.changed_p999, "{:.0f} levels"),
        ("photo PSNR", g.psnr, "{:.1f} dB"),
        ("colour added to a grey photo", g.added_colour, "{:.0f} levels"),
    ]
    for label, w, fmt in worst:
        if w is not None:
            console.print(f"  worst {label}: {_value(w, fmt)} ({w.name})", highlight=False)
    console.print(f"  {fold.seconds_per_face:.1f} s/face, {fold.steps:.1f} steps on average", highlight=False)


def _print_folds(preset: str, folds: list, console: Console) -> None:
    """The folds side by side, every face each, and the worst fold by each figure."""
    table = Table(title=f"{preset}: every fold, every face", title_justify="left")
    for column in (
        "held out", "self social", "cross social", "worst margin social", "LPIPS max", "judge LPIPS max",
        "p99.9 max", "PSNR min", "s/face", "steps",
    ):
        table.add_column(column, justify="right")
    groups = [f.group() for f in folds]
    for fold, g in zip(folds, groups, strict=True):
        table.add_row(
            fold.heldout, str(g.self_social), str(g.cross_social), _named(g.worst_margin, "{:+.3f}"), _named(g.lpips, "{:.4f}"),
            _named(g.judge_lpips, "{:.4f}"), _named(g.changed_p999, "{:.0f}"), _named(g.psnr, "{:.1f}"),
            f"{fold.seconds_per_face:.1f}", f"{fold.steps:.1f}",
        )
    table.add_row(
        "[bold]worst fold[/]", _worst_rate(g.self_social for g in groups), _worst_rate(g.cross_social for g in groups),
        "", "", "", "", "",
        f"{max(f.seconds_per_face for f in folds):.1f}", "",
    )
    console.print(table)


def _worst_rate(rates) -> str:
    measured = [r for r in rates if r.n]
    return str(min(measured, key=lambda r: r.value)) if measured else "-"


def _value(worst, fmt: str) -> str:
    return "-" if worst is None else fmt.format(worst.value)


def _named(worst, fmt: str) -> str:
    return "-" if worst is None else f"{fmt.format(worst.value)} {worst.name}"


def _rate(distances: list[float]) -> str:
    return f"{sum(d > 0.6 for d in distances)}/{len(distances)}"


def _finite_mean(distances: list[float]) -> str:
    finite = [d for d in distances if d != float("inf")]
    return f"{statistics.mean(finite):.3f}" if finite else "-"
