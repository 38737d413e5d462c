"""Installing the daemon as a per-user service: a systemd user unit, or a launchd agent on macOS."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lowkeyd.daemon.system import launchd, systemd


@dataclass(frozen=True)
class ServicePlan:
    path: Path  # where the service file goes
    content: str
    commands: list[list[str]]  # what loads and starts it


def _systemd_plan(argv: Sequence[str], writable: Sequence[Path], cpu_only: bool) -> ServicePlan:
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return ServicePlan(
        path=config_home / "systemd" / "user" / systemd.UNIT_NAME,
        content=systemd.render_unit(systemd.command_line(argv), writable=writable, cpu_only=cpu_only),
        commands=[
            ["systemctl", "--user", "daemon-reload"],
            ["systemctl", "--user", "enable", systemd.UNIT_NAME],
            # restart rather than start, so a reinstall replaces a running daemon
            ["systemctl", "--user", "restart", systemd.UNIT_NAME],
        ],
    )


def _launchd_plan(argv: Sequence[str]) -> ServicePlan:
    home = Path.home()
    path = home / "Library" / "LaunchAgents" / f"{launchd.LABEL}.plist"
    content = launchd.render_plist(argv, log_path=home / "Library" / "Logs" / "lowkeyd.log").decode()
    return ServicePlan(path=path, content=content, commands=[["launchctl", "bootstrap", f"gui/{os.getuid()}", str(path)]])


def install_service(
    argv: Sequence[str], *, writable: Sequence[Path] = (), cpu_only: bool = False, write: bool = True
) -> ServicePlan:
    """The service file that runs ``argv`` for this user, written in place unless ``write`` is False.

    ``writable``: folders outside the home the daemon writes to (the systemd unit's sandbox opens them).
    """
    plan = _launchd_plan(argv) if sys.platform == "darwin" else _systemd_plan(argv, writable, cpu_only)
    if write:
        plan.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = plan.path.with_name(f".{plan.path.name}.tmp")
        tmp.write_text(plan.content, encoding="utf-8")
        os.replace(tmp, plan.path)
    return plan
