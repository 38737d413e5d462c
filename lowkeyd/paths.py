"""Where lowkeyd keeps its files (XDG on Linux, the platform's own elsewhere)."""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

from platformdirs import PlatformDirs

_DIRS = PlatformDirs("lowkeyd", appauthor=False)


def cache_dir() -> Path:
    """Verified weight files and converted models (``~/.cache/lowkeyd`` on Linux).

    ``LOWKEYD_CACHE_DIR`` overrides it, so tests and containers can keep a private cache.
    """
    return Path(os.environ.get("LOWKEYD_CACHE_DIR") or _DIRS.user_cache_dir)


def config_dir() -> Path:
    return Path(os.environ.get("LOWKEYD_CONFIG_DIR") or _DIRS.user_config_dir)


def state_dir() -> Path:
    return Path(os.environ.get("LOWKEYD_STATE_DIR") or _DIRS.user_state_dir)


def is_within(path: Path, folder: Path) -> bool:
    """``path`` is ``folder`` or inside it (both absolute and resolved)."""
    return path == folder or folder in path.parents


def private_folder(path: Path) -> Path:
    """``path``, made if missing, and its user's alone (0700) whatever the umask: the state names every photo."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if stat.S_IMODE(path.stat().st_mode) != 0o700:  # made by an earlier version, or by hand
        path.chmod(0o700)
    return path


def runtime_dir() -> Path:
    """Sockets and other per-login files; falls back to the state dir where there is no runtime dir."""
    override = os.environ.get("LOWKEYD_RUNTIME_DIR")
    if override:
        return Path(override)
    try:
        with warnings.catch_warnings():
            # Without XDG_RUNTIME_DIR (cron, containers) platformdirs warns and uses /tmp/runtime-UID,
            # which is fine for a socket of our own; the warning would only clutter every command.
            warnings.simplefilter("ignore")
            return Path(_DIRS.user_runtime_dir)
    except Exception:  # platformdirs raises on platforms without one
        return state_dir()
