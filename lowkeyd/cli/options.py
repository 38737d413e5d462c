"""Command-line options shared by the commands that run the engine."""

from __future__ import annotations

import argparse

import yaml

from lowkeyd.errors import LowkeydError


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


def parse_overrides(pairs: list[str]) -> dict[str, object]:
    """``["steps=20", "flip=false"]`` -> ``{"steps": 20, "flip": False}`` (values read as YAML scalars)."""
    overrides: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise LowkeydError(f"--set {pair!r}: expected KEY=VALUE")
        overrides[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return overrides


def split_names(text: str | None) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: a comma-separated option's names."""
    return [n.strip() for n in (text or "").split(",") if n.strip()]
