"""systemd integration: the notify protocol (READY, STATUS, WATCHDOG) and the user unit.

The protocol is one datagram of ``KEY=value`` lines to the socket named in
``$NOTIFY_SOCKET`` (sd_notify(3)); outside systemd that variable is unset and
every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Sequence

log = logging.getLogger(__name__)

UNIT_NAME = "lowkeyd.service"

_UNIT = """\
[Unit]
Description=lowkeyd: cloak the faces in new photos before they are synced

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec_start}
Restart=on-failure
RestartSec=10
# 78 (EX_CONFIG): a bad config does not fix itself; restarting would only repeat the error.
RestartPreventExitStatus=78
# The first start may download and convert model weights.
TimeoutStartSec=15min
TimeoutStopSec=30
WatchdogSec=120
# Cloaking is heavy: run it only on otherwise idle CPU and disk, so the desktop stays responsive.
Nice=10
CPUSchedulingPolicy=idle
IOSchedulingClass=idle
Environment=PYTHONUNBUFFERED=1

[Install]
WantedBy=default.target
"""

# The checked-in systemd/lowkeyd.service: lowkeyd installed with pipx or `pip install --user`.
DEFAULT_EXEC_START = "%h/.local/bin/lowkeyd run"

_NEEDS_QUOTES = re.compile(r"""[\s"'\\;]""")


def command_line(argv: Sequence[str]) -> str:
    """``argv`` as an ExecStart= value: quoted where needed, ``%`` and ``$`` escaped (systemd.service(5))."""

    def word(arg: str) -> str:
        arg = arg.replace("%", "%%").replace("$", "$$")
        if not arg or _NEEDS_QUOTES.search(arg):
            arg = '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return arg

    return " ".join(word(a) for a in argv)


def render_unit(exec_start: str = DEFAULT_EXEC_START) -> str:
    return _UNIT.format(exec_start=exec_start)


def notify(*assignments: str) -> bool:
    """Send ``KEY=value`` lines to the service manager; False when there is none to tell."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall("\n".join(assignments).encode())
    except OSError as exc:
        log.warning("cannot tell systemd %s: %s", assignments, exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """How often to send WATCHDOG=1 (half the configured timeout), or None when no watchdog is armed."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None
