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
from pathlib import Path

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
# Hardened as far as a user service allows (`systemd-analyze security --user`: 2.2, from 9.8).
# Files it creates are its user's alone; the state database names photos.
UMask=0077
NoNewPrivileges=yes
# The system is read-only; the home (outbox, state, config, model cache) and the runtime dir (API
# socket) stay writable; an outbox elsewhere is added by `lowkeyd install-service`.
ProtectSystem=strict
ProtectHome=read-only
ReadWritePaths=-%h -%t{writable}
PrivateTmp=yes
PrivateMounts=yes{devices}
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
# Unix sockets (the API, D-Bus) and IP (the API's TCP port, upload hooks).
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RemoveIPC=yes
KeyringMode=private
CapabilityBoundingSet=
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM

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


def render_unit(exec_start: str = DEFAULT_EXEC_START, *, writable: Sequence[Path] = (), cpu_only: bool = False) -> str:
    """The user unit; ``writable`` folders outside the home, and no devices at all when it runs on the CPU only.

    A GPU is a device: without ``cpu_only`` the unit keeps /dev, so CUDA can reach it.
    """
    extra = "".join(" " + command_line(["-" + str(folder)]) for folder in writable)
    devices = "\n# CPU only: no device nodes at all.\nPrivateDevices=yes" if cpu_only else ""
    return _UNIT.format(exec_start=exec_start, writable=extra, devices=devices)


# The folders the unit's PrivateTmp=yes replaces with an empty one of the service's own.
PRIVATE_TMP = (Path("/tmp"), Path("/var/tmp"))


def hidden_by_private_tmp(paths: dict[str, Path]) -> list[str]:
    """A warning for each of ``paths`` (what it is -> path) that the service would not see: under /tmp or /var/tmp."""
    warnings = []
    for what, path in paths.items():
        real = path.expanduser().resolve()
        hidden = next((tmp for tmp in PRIVATE_TMP if real.is_relative_to(tmp.resolve())), None)
        if hidden is not None:
            warnings.append(
                f"{what} {path} is under {hidden}, which the unit's PrivateTmp=yes hides from the service "
                f"(it sees an empty {hidden} of its own): move it out of {hidden}, or run `lowkeyd run` yourself"
            )
    return warnings


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
