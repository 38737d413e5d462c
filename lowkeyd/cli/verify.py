"""``lowkeyd verify``: does a cloaked photo still match its original, per face and per recogniser?"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from lowkeyd.errors import PhotoError
from lowkeyd.photo import read_photo

# How much the difference image is amplified: a change of 1 grey level becomes 12.
_DIFF_GAIN = 12


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="check a cloaked photo against its original",
        description="Compare each face of ORIGINAL with its cloaked counterpart, for every recogniser lowkeyd runs "
        "(dlib through its own runtime). Recognisers that were attack members are marked: their verdict is "
        "white-box. What an unseen recogniser would say is the holdout bench's estimate, printed at the end. "
        "Exit status 0 when no recogniser matches any face, 1 otherwise.",
    )
    p.add_argument("original", type=Path)
    p.add_argument("cloaked", type=Path)
    p.add_argument("--social", action="store_true", help="first downscale the cloaked photo to 1080 px and re-encode it as JPEG q80, as photo sites do")
    p.add_argument("--picture", type=Path, metavar="FILE", help="write original | cloaked | amplified difference side by side")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps")
    p.set_defaults(func=run)


def difference_picture(original: np.ndarray, cloaked: np.ndarray) -> Image.Image:
    """Original, cloaked, and their difference amplified around mid-grey, side by side."""
    diff = np.clip(128 + _DIFF_GAIN * (cloaked.astype(np.int16) - original.astype(np.int16)), 0, 255).astype(np.uint8)
    return Image.fromarray(np.concatenate([original, cloaked, diff], axis=1))


def run(args: argparse.Namespace) -> int:
    from lowkeyd.engine.evaluate import Evaluator
    from lowkeyd.engine.models.zoo import available_embedders
    from lowkeyd.engine.transfer import transfer_estimate

    original = read_photo(args.original)
    cloaked = read_photo(args.cloaked)
    if original.rgb.shape != cloaked.rgb.shape:
        raise PhotoError(
            f"{args.cloaked} is {cloaked.size[0]}x{cloaked.size[1]} but {args.original} is "
            f"{original.size[0]}x{original.size[1]}: not a cloaked copy of it"
        )
    console = Console()
    marker = cloaked.cloak_marker or {}
    if marker:
        fields = ", ".join(f"{k} {v}" for k, v in marker.items())
        console.print(f"{args.cloaked.name}: cloaked by lowkeyd ({fields})", highlight=False)
    else:
        # lowkeyd tags its output only when asked (mark_published, cloak --mark)
        console.print(f"{args.cloaked.name}: carries no lowkeyd marker (untagged output)", highlight=False)
    # Markers before 0.2 do not name the ensemble: it was every recogniser then available.
    members = set(marker["models"].split(",")) if "models" in marker else set(available_embedders())
    with console.status("loading the face models..."):
        evaluator = Evaluator.load(args.device)
    result = evaluator.compare(original.rgb, cloaked.rgb, social=args.social)
    if not result.faces:
        console.print(f"{args.original.name}: no face found; nothing to verify")
        return 0

    all_protected = True
    for i, face in enumerate(result.faces, 1):
        title = f"face {i} ({face.size:.0f} px at {face.box[0]:.0f},{face.box[1]:.0f})"
        if args.social:
            title += ", after resize to 1080 px + JPEG q80"
        table = Table(title=title, title_justify="left")
        for column in ("recogniser", "in the attack", "measure", "value", "match if", "protected"):
            table.add_column(column)
        protected = face.protected
        if not face.found:
            table.add_row("detector", "-", "-", "face not found again", "-", "yes")
        else:
            for judge in evaluator.judges:
                role = "yes (white-box)" if judge.name in members else "no (independent)"
                table.add_row(
                    judge.name, role, judge.measure, f"{face.scores[judge.name]:.3f}", judge.rule, _yes(protected[judge.name])
                )
        console.print(table)
        if face.lpips is not None:
            console.print(f"  LPIPS (alex) of the face region: {face.lpips:.4f}", highlight=False)
        all_protected &= all(protected.values())
    if not math.isnan(result.psnr):
        console.print(f"whole-photo PSNR: {result.psnr:.1f} dB", highlight=False)
    if args.picture:
        difference_picture(original.rgb, cloaked.rgb).save(args.picture)
        console.print(f"wrote {args.picture} (original | cloaked | difference x{_DIFF_GAIN})", highlight=False)
    independent = sorted({j.name for j in evaluator.judges} - members)
    verdict = "every face protected" if all_protected else "NOT protected: a recogniser still matches a face"
    checked = f"independent: {', '.join(independent)}" if independent else "all of them attack members, so white-box"
    console.print(f"{verdict} against {len(evaluator.judges)} recognisers ({checked})", highlight=False)
    estimate = transfer_estimate(
        marker.get("preset", "default"), rgb=original.rgb, face_sizes=[face.size for face in result.faces]
    )
    if estimate is not None:
        console.print(estimate.describe(), highlight=False)
    else:
        console.print(
            f"no holdout estimate for preset {marker.get('preset', '?')!r} with its present settings: "
            "`lowkeyd bench --holdout` measures one",
            highlight=False,
        )
    return 0 if all_protected else 1


def _yes(ok: bool) -> str:
    return "[green]yes[/]" if ok else "[red]no[/]"
