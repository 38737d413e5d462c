"""Draw docs/frontier.png: holdout protection against face LPIPS, one point per attack setting.

Left: presets from ``lowkeyd bench --holdout --json FILE`` reports (preset name -> folds);
a point is the mean over folds, its bar spans the worst to the best fold.
Right (``--sweep``): settings tried on the hardest fold alone, from JSON-lines records
``{"label", "folds": [fold summary, ...]}`` (what the tuning sweep wrote).

    .venv/bin/python scripts/frontier.py docs/holdout.json --sweep docs/holdout-sweep.jsonl -o docs/frontier.png
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt


def _panel(ax, points: dict[str, list[dict]], title: str) -> None:
    for name, folds in sorted(points.items()):
        values = [100 * f["self_social"] for f in folds]
        x = statistics.mean(f["lpips"] for f in folds)
        y = statistics.mean(values)
        ax.errorbar(x, y, yerr=[[y - min(values)], [max(values) - y]], fmt="o", capsize=3)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("face LPIPS (alex, phase-averaged)")
    ax.grid(alpha=0.3)
    ax.set_ylim(-5, 105)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", type=Path)
    parser.add_argument("--sweep", type=Path, help="JSON lines of settings tried on one fold")
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/frontier.png"))
    args = parser.parse_args()
    presets: dict[str, list[dict]] = {}
    for path in args.reports:
        presets.update(json.loads(path.read_text()))
    fig, axes = plt.subplots(1, 2 if args.sweep else 1, figsize=(12 if args.sweep else 6, 4.8), squeeze=False)
    _panel(axes[0][0], presets, "presets: every leave-one-out fold, 5 sample photos")
    axes[0][0].set_ylabel("faces an unseen recogniser fails to match,\nself-match after resize + JPEG (%)")
    if args.sweep:
        tried = {}
        for line in args.sweep.read_text().splitlines():
            record = json.loads(line)
            tried[record["label"]] = record["folds"]
        _panel(axes[0][1], tried, "settings tried: SFace held out, 3 photos (the hardest fold)")
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
