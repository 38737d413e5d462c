"""Draw docs/frontier.png: holdout protection against face LPIPS, one point per attack setting.

Left: presets from ``lowkeyd bench --holdout --json FILE`` reports (either the varied-set
format, ``{"set", "presets": {name: {"folds": [...]}}}``, or the older preset name -> folds):
faces protected, mean over folds, the bar spanning the worst to the best fold.
Right (``--sweep``): settings tried on the hardest fold alone, from JSON-lines records
``{"label", "folds": [fold summary, ...]}``: the held-out recogniser's mean margin,
which still separates settings that all protect every face.

    .venv/bin/python scripts/frontier.py docs/holdout.json --sweep docs/holdout-sweep.jsonl -o docs/frontier.png
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt


def _panel(ax, points: dict[str, list[dict]], title: str, key: str, scale: float, numbered: bool = False) -> None:
    """One point per setting; ``numbered``: points carry numbers and a legend names them (for crowded panels)."""
    for i, (name, folds) in enumerate(points.items() if numbered else sorted(points.items())):
        values = [scale * f[key] for f in folds]
        x = statistics.mean(f["lpips"] for f in folds)
        y = statistics.mean(values)
        label = f"{i + 1}: {name}" if numbered else None
        ax.errorbar(x, y, yerr=[[y - min(values)], [max(values) - y]], fmt="o", capsize=3, label=label)
        # Neighbouring points are common: alternate the label above and below its point.
        text = str(i + 1) if numbered else name
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(5, 5 if i % 2 else -11), fontsize=7)
    if numbered:
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("face LPIPS (alex, phase-averaged)")
    ax.grid(alpha=0.3)


def _figures(fold: dict) -> dict:
    """A fold's headline figures (self_social, lpips, margin_social), from either report format."""
    if "groups" not in fold:
        return fold
    every = fold["groups"]["all"]
    margins = [f["self_social"] for f in fold["face_records"] if math.isfinite(f["self_social"])]
    return {
        "self_social": every["self_social"]["rate"],
        "lpips": every["lpips_mean"],
        "margin_social": statistics.mean(margins) if margins else math.nan,
    }


def _presets(report: dict) -> tuple[dict[str, list[dict]], str]:
    """Preset name -> fold figures, and which photos they ran on."""
    if "presets" not in report:
        return report, "5 sample photos"
    runs = {name: [_figures(f) for f in run["folds"]] for name, run in report["presets"].items()}
    return runs, f"{report['set']} set{' (a subset)' if report['subset'] else ''}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", type=Path)
    parser.add_argument("--sweep", type=Path, help="JSON lines of settings tried on one fold")
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/frontier.png"))
    args = parser.parse_args()
    presets: dict[str, list[dict]] = {}
    photos = set()
    for path in args.reports:
        runs, ran_on = _presets(json.loads(path.read_text()))
        presets.update(runs)
        photos.add(ran_on)
    fig, axes = plt.subplots(1, 2 if args.sweep else 1, figsize=(15 if args.sweep else 6, 5.4), squeeze=False)
    _panel(axes[0][0], presets, f"presets: every leave-one-out fold, {', '.join(sorted(photos))}", "self_social", 100)
    axes[0][0].set_ylim(-5, 105)
    axes[0][0].set_ylabel("faces an unseen recogniser fails to match,\nself-match after resize + JPEG (%)")
    if args.sweep:
        tried = {}
        for line in args.sweep.read_text().splitlines():
            record = json.loads(line)
            tried[record["label"]] = [_figures(f) for f in record["folds"]]
        _panel(axes[0][1], tried, "settings tried: SFace held out (the hardest fold), 3 photos unless labelled", "margin_social", 1, numbered=True)
        axes[0][1].axhline(0, color="grey", lw=0.8)
        axes[0][1].set_ylabel("held-out margin past its threshold, after resize + JPEG\n(mean over faces; > 0: no match)")
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
