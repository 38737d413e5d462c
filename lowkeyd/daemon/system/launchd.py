"""The macOS launch agent: launchd's counterpart of the systemd user unit."""

from __future__ import annotations

import plistlib
from collections.abc import Sequence
from pathlib import Path

LABEL = "lowkeyd"

# The checked-in service/launchd/lowkeyd.plist: lowkeyd installed with pipx.
DEFAULT_PROGRAM = ("/usr/local/bin/lowkeyd", "run")


def render_plist(argv: Sequence[str] = DEFAULT_PROGRAM, log_path: Path | None = None) -> bytes:
    agent: dict[str, object] = {
        "Label": LABEL,
        "ProgramArguments": list(argv),
        "RunAtLoad": True,
        # Restart after a failure, not after a clean stop; launchd has no RestartPreventExitStatus,
        # so a bad config is retried, but no more often than ThrottleInterval.
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": 60,
        # Background: macOS throttles its CPU and disk use, so the desktop stays responsive.
        "ProcessType": "Background",
        "Nice": 10,
        "LowPriorityIO": True,
        "EnvironmentVariables": {"PYTHONUNBUFFERED": "1"},
        # Files it creates are its user's alone (launchd has no sandbox settings for an agent beyond this).
        "Umask": 0o077,
    }
    if log_path is not None:
        agent["StandardErrorPath"] = str(log_path)
    return plistlib.dumps(agent, sort_keys=False)
