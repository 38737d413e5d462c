"""Draw docs/frontier.png: holdout protection against face LPIPS, one point per attack variant.

Input: JSON files written by ``lowkeyd bench --holdout --json FILE`` (preset name -> folds).
A point is the mean over folds; its error bar spans the worst and best fold.

    .venv/bin/python scripts/frontier.py docs/holdout-*.json -o docs/frontier.png
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/frontier.png"))
    args = parser.parse_args()
    points = {}
    for path in args.reports:
        points.update(json.loads(path.read_text()))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, key, title in ((axes[0], "self_social", "self-match, after resize + JPEG"), (axes[1], "cross_social", "cross-photo, after resize + JPEG")):
        for name, folds in sorted(points.items()):
            values = [100 * f[key] for f in folds]
            x = statistics.mean(f["lpips"] for f in folds)
            y = statistics.mean(values)
            ax.errorbar(x, y, yerr=[[y - min(values)], [max(values) - y]], fmt="o", capsize=3)
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_title(title)
        ax.set_xlabel("face LPIPS (alex, phase-averaged)")
        ax.grid(alpha=0.3)
        ax.set_ylim(-5, 105)
    axes[0].set_ylabel("faces an unseen recogniser fails to match (%)\nmean over leave-one-out folds, bars: worst..best fold")
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
