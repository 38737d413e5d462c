"""``lowkeyd open``: the running daemon's status page, in the user's browser."""

from __future__ import annotations

import argparse
import sys
import webbrowser

from lowkeyd.errors import LowkeydError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    page = sub.add_parser(
        "open", help="open the running daemon's status page in your browser (signed in with a one-time link)"
    )
    page.add_argument(
        "--print", dest="print_only", action="store_true",
        help="print the one-time link instead of opening a browser (it works once, for two minutes)",
    )
    page.set_defaults(func=_open)


def _open(args: argparse.Namespace) -> int:
    from lowkeyd.serving.api.client import DaemonClient, DaemonUnavailable

    with DaemonClient(timeout=30.0) as client:
        try:
            url = client.status_page_login()
        except DaemonUnavailable:
            raise LowkeydError("no lowkeyd daemon is running (start it with `lowkeyd run`)") from None
    if args.print_only:
        print(url)
        return 0
    # webbrowser runs xdg-open / open / $BROWSER; the link is spent on first use, so showing it is harmless.
    if not webbrowser.open(url):
        print(f"no browser could be started; open this link (valid once, for two minutes):\n{url}", file=sys.stderr)
        return 1
    print("opened the status page in your browser")
    return 0
