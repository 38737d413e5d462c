"""The ``lowkeyd`` command line: one module per command group, wired here."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from lowkeyd import __version__
from lowkeyd.errors import LowkeydError

# Each module registers its own sub-commands; importing them is cheap (no torch at import time).
_COMMAND_MODULES = ("cloak", "verify", "bench", "models", "daemon", "status_page", "serve")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="lowkeyd",
        description="Cloak the faces in your photos before face-recognition scrapers see them.",
    )
    parser.add_argument("--version", action="version", version=f"lowkeyd {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens in detail")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(f"lowkeyd.cli.{name}").add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, where a closed pipe is caught below, not at exit
        return code
    except LowkeydError as exc:
        print(f"lowkeyd: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("lowkeyd: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader stopped reading (`lowkeyd status | head -1`): not an error. Python would still
        # complain flushing stdout at exit, so stdout is pointed at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports it
