#!/usr/bin/env python3
"""Print a Markdown table comparing holdout reports that differ in one setting (item 4's ablations).

    lowkeyd bench --holdout --folds sface --json base.json
    lowkeyd bench --holdout --folds sface --set ti_kernel=0 --json no-ti.json
    .venv/bin/python scripts/ablation_table.py base.json no-ti.json

Each row is one preset of one report on one fold, labelled by the settings in
which it differs from the shipped preset of its name. The rates say how many
faces are protected; the mean margins (how far past the held-out recogniser's
threshold a face ends, social pipeline; negative: still matched) still separate
settings whose rates tie, which on 21 faces they often do.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from lowkeyd.engine.presets import PRESETS


def _label(settings: dict) -> str:
    """The preset's name and every setting in which the run differs from it as shipped now, including
    settings it no longer has (a run from before a knob was removed)."""
    name = settings["name"].split("(")[0]
    shipped = PRESETS.get(name)
    if shipped is None:
        return settings["name"]
    base = shipped.model_dump()
    changed = [f"{k}={v}" for k, v in settings.items() if k != "name" and base.get(k, object()) != v]
    return name + (f" ({', '.join(changed)})" if changed else "")


def _rate(group: dict, key: str) -> str:
    r = group[key]
    return f"{r['rate']:.0%} [{r['low']:.0%}-{r['high']:.0%}]"


def rows(report: dict) -> list[list[str]]:
    out = []
    for preset in report["presets"].values():
        label = _label(preset["settings"])
        for fold in preset["folds"]:
            faces = fold["face_records"]
            cross = [m for f in faces for m in f["cross_social"]]
            every = fold["groups"]["all"]
            out.append(
                [
                    label,
                    fold["heldout"],
                    str(len(faces)),
                    _rate(every, "self_social"),
                    _rate(every, "cross_social"),
                    f"{statistics.mean(f['self_social'] for f in faces):+.3f}",
                    f"{statistics.mean(cross):+.3f}",
                    f"{every['lpips']['value']:.4f}",
                    f"{every['changed_p999']['value']:.0f}",
                    f"{every['psnr']['value']:.1f}",
                    f"{fold['steps']:.1f}",
                    f"{fold['seconds_per_face']:.1f}",
                ]
            )
    return out


HEADER = [
    "setting", "held out", "faces", "self social", "cross social", "self margin", "cross margin",
    "LPIPS max", "p99.9 max", "PSNR min", "steps", "s/face",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", type=Path, help="JSON files `lowkeyd bench --holdout --json` wrote")
    args = parser.parse_args()
    table = []
    for path in args.reports:
        try:
            table += rows(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError) as exc:
            print(f"ablation_table: {path}: not a holdout report ({type(exc).__name__}: {exc})", file=sys.stderr)
            return 1
    print("| " + " | ".join(HEADER) + " |")
    print("|" + " --- |" * len(HEADER))
    for row in table:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
