"""Command-line options shared by the commands that run the engine."""

from __future__ import annotations

import argparse



def add_engine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one preset setting, e.g. --set steps=20 (repeatable)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: the best available)")


def split_names(text: str | None) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: a comma-separated option's names."""
    return [n.strip() for n in (text or "").split(",") if n.strip()]
