#!/usr/bin/env python3
"""Write ``lowkeyd/engine/transfer.json`` from a holdout bench report.

    lowkeyd bench --holdout --presets default,strong --json holdout.json
    .venv/bin/python scripts/transfer_figures.py holdout.json

Keeps only shipped presets run unchanged on the whole varied set (see
``lowkeyd.engine.transfer.figures_from_bench``), each with a hash of its
fields; a preset already stored keeps its figures while its hash still
matches the preset as it is now, and loses them once it does not.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lowkeyd.engine.presets import PRESETS
from lowkeyd.engine.transfer import figures_from_bench, preset_hash

STORE = Path(__file__).resolve().parent.parent / "lowkeyd" / "engine" / "transfer.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path, help="the JSON file `lowkeyd bench --holdout --json` wrote")
    parser.add_argument("--out", type=Path, default=STORE, help="where to write (default: %(default)s)")
    args = parser.parse_args()
    try:
        report = json.loads(args.report.read_text())
        kept, skipped = figures_from_bench(report)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"transfer_figures: {args.report} is not a readable holdout bench report: {exc!r}", file=sys.stderr)
        return 1
    for reason in skipped:
        print(f"left out: {reason}", file=sys.stderr)
    if not kept:
        print("transfer_figures: nothing to store; transfer.json left as it was", file=sys.stderr)
        return 1
    store = json.loads(args.out.read_text()) if args.out.is_file() else {"presets": {}}
    current = {
        name: entry
        for name, entry in store["presets"].items()
        if name in PRESETS and entry["preset_hash"] == preset_hash(PRESETS[name])
    }
    store["presets"] = current | kept
    args.out.write_text(json.dumps(store, indent=1) + "\n")
    print(f"wrote {args.out}: {', '.join(sorted(store['presets']))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
