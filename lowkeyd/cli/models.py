"""``lowkeyd models``: which weight files are here, where they came from, and fetching them."""

from __future__ import annotations

import argparse
import sys

from lowkeyd.engine import weights
from lowkeyd.errors import WeightsError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="list or fetch the pretrained weight files")
    actions = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="show every weight file, where it came from and whether it checks out")
    listing.add_argument("--licences", action="store_true", help="add each file's licence and training-data terms")
    listing.set_defaults(func=list_models)

    fetch = actions.add_parser("fetch", help="download and verify weight files (all required ones by default)")
    fetch.add_argument("names", nargs="*", metavar="NAME", help=f"weight files to fetch: {', '.join(weights.REGISTRY)}")
    fetch.set_defaults(func=fetch_models)


def list_models(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.filesize import decimal
    from rich.table import Table

    table = Table("model", "role", "source used", "verified", "size")
    table.columns[0].no_wrap = True
    table.columns[2].overflow = "fold"
    if args.licences:
        table.add_column("licence")
    for name in weights.REGISTRY:
        status = weights.weight_status(name)
        row = [name, status.entry.role, status.source, status.verified, decimal(status.size) if status.size else "?"]
        if args.licences:
            row.append(status.entry.licence)
        table.add_row(*row)
    Console().print(table)
    return 0


def fetch_models(args: argparse.Namespace) -> int:
    names = args.names or [name for name, entry in weights.REGISTRY.items() if not entry.optional]
    unknown = [name for name in names if name not in weights.REGISTRY]
    if unknown:
        raise WeightsError(f"unknown weight file(s) {', '.join(unknown)}; known: {', '.join(weights.REGISTRY)}")
    failed = 0
    for name in names:
        try:
            path = weights.weight_path(name)
        except WeightsError as exc:
            failed += 1
            print(f"FAILED {name}: {exc}", file=sys.stderr)
            continue
        print(f"ok     {name} ({weights.weight_status(name).source}): {path}")
    return 1 if failed else 0
