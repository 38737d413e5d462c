"""``lowkeyd run``, ``status``, ``check-config`` and ``install-service``: the daemon's commands."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lowkeyd.daemon.config import DaemonConfig, default_config_path, load_config
from lowkeyd.errors import LowkeydError

# A heartbeat older than this many seconds means the daemon that wrote it is gone or hung.
_STALE_HEARTBEAT = 30.0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    config_help = f"config file (default: {default_config_path()})"

    run = sub.add_parser("run", help="run the daemon in the foreground (what the service runs)")
    run.add_argument("--config", type=Path, help=config_help)
    run.set_defaults(func=_run)

    check = sub.add_parser("check-config", help="validate the config file and say what it sets up")
    check.add_argument("--config", type=Path, help=config_help)
    check.set_defaults(func=_check_config)

    status = sub.add_parser("status", help="what the daemon is doing and has done: queue, counts, recent errors")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_status)

    install = sub.add_parser(
        "install-service", help="install the daemon as a systemd user service (launchd agent on macOS)"
    )
    install.add_argument("--config", type=Path, help=f"{config_help}; checked first")
    install.add_argument("--print", dest="print_only", action="store_true", help="print the unit, write nothing")
    install.add_argument("--enable", action="store_true", help="also enable and start it now")
    install.set_defaults(func=_install_service)


def _run(args: argparse.Namespace) -> int:
    from lowkeyd.daemon.logs import setup_daemon_logging
    from lowkeyd.daemon.service import Daemon

    setup_daemon_logging(args.verbose)
    return Daemon(load_config(args.config)).run()


def _describe(config: DaemonConfig) -> list[str]:
    lines = []
    for source in config.sources:
        how = [
            "recursive" if source.recursive else "top folder only",
            f"polled every {source.poll_interval:g} s" if source.polling else "watched",
        ]
        if source.include:
            how.append("include " + " ".join(source.include))
        if source.exclude:
            how.append("exclude " + " ".join(source.exclude))
        lines.append(f"source {source.name}: {source.path} ({', '.join(how)}) -> {config.outbox / source.name}")
    protection = config.protection
    lines.append(f"preset {protection.preset.name} on {protection.device or 'the best device available'}")
    lines.append(
        f"photos without faces: {protection.no_face}; GPS {'stripped' if protection.strip_gps else 'kept'}; "
        f"lowkeyd's tag {'written' if protection.mark else 'not written'}; "
        f"notifications {'on' if config.notifications.enabled else 'off'}"
    )
    api = config.api
    if api.enabled:
        tcp = f" and http://{api.tcp.host}:{api.tcp.port} (token)" if api.tcp else ""
        lines.append(f"API on its socket in the runtime dir{tcp}; uploads up to {api.max_upload_mb:g} MB")
        for root in api.job_roots:
            lines.append(f"API job root {root.name}: {root.path} -> {config.outbox / root.name}")
    if config.on_published:
        lines.append(f"after each published photo: {shlex.join(config.on_published.command)}")
    return lines


def _check_config(args: argparse.Namespace) -> int:
    path = args.config or default_config_path()
    config = load_config(path)
    print(f"{path}: OK")
    for line in _describe(config):
        print(f"  {line}")
    return 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def status_report() -> dict[str, Any]:
    """What ``lowkeyd status`` shows, from the state database (read-only)."""
    from lowkeyd.daemon.hooks import hook_report
    from lowkeyd.daemon.state import StateDB
    from lowkeyd.daemon.store import default_state_path

    path = default_state_path()
    if not path.exists():
        raise LowkeydError(f"no state at {path}: the daemon has not run yet (start it with `lowkeyd run`)")
    state = StateDB(path, readonly=True)
    try:
        info = state.daemon_info()
        running = (
            info is not None and _pid_alive(info.pid) and time.time() - info.heartbeat < _STALE_HEARTBEAT
        )
        return {
            "running": running,
            "daemon": None
            if info is None
            else {
                "pid": info.pid,
                "started": info.started,
                "heartbeat": info.heartbeat,
                "settling": info.waiting,
                "status": info.message,
            },
            "counts": state.counts(),
            "faces_cloaked": state.faces_cloaked(),
            # published, removed, renamed, original_deleted...: what the outbox did to follow its originals
            "events": state.event_counts(),
            # cloaked copies published as "name (lowkeyd 2).jpg" because a file of the user's had the name
            "published_aside": state.published_aside(),
            "recent_errors": [
                {
                    "source": r.source,
                    "path": r.rel_path,
                    "status": r.status.value,
                    "attempts": r.attempts,
                    "error": r.error,
                    "next_attempt": r.next_attempt,
                }
                for r in state.recent_errors()
            ],
            "hooks": hook_report(),
        }
    finally:
        state.close()


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _status(args: argparse.Namespace) -> int:
    report = status_report()
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return 0
    daemon = report["daemon"]
    if report["running"]:
        up = _duration(time.time() - daemon["started"])
        print(f"lowkeyd is running (pid {daemon['pid']}, up {up}): {daemon['status']}")
    else:
        print("lowkeyd is not running")
    counts = report["counts"]
    outcomes = {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("done:")}
    detail = ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in sorted(outcomes.items()))
    print(f"photos done: {counts.get('done', 0)}" + (f" ({detail})" if detail else ""))
    print(f"faces cloaked: {report['faces_cloaked']}")
    for status in ("queued", "processing", "retry", "failed", "held"):
        if counts.get(status):
            print(f"{status}: {counts[status]}")
    events = report["events"]
    if counts.get("gone"):
        followed = [
            f"{events[e]} {what}"
            for e, what in (("removed", "copies removed"), ("renamed", "renamed"), ("original_deleted", "copies kept"))
            if events.get(e)
        ]
        print(f"originals deleted or renamed: {counts['gone']}" + (f" ({', '.join(followed)})" if followed else ""))
    left, aside = events.get("left_alone", 0), report["published_aside"]
    if left or aside:
        print(
            f"files of yours in the outbox, never overwritten or removed: {aside} with a copy published beside it "
            f"as \"name (lowkeyd 2)\", {left} left where lowkeyd's copy had been"
        )
    if report["recent_errors"]:
        print("recent errors:")
        for e in report["recent_errors"]:
            when = {"failed": "gave up", "held": "held back, not published"}.get(e["status"]) or (
                f"retry in {_duration(max(0, e['next_attempt'] - time.time()))}"
            )
            print(f"  {e['source']}/{e['path']} ({e['attempts']} attempt(s), {when}): {e['error']}")
    hooks = report["hooks"]
    if hooks is not None:
        counts = hooks["counts"]
        pending = f", {counts['pending']} pending" if counts["pending"] else ""
        print(f"publish hook: {counts['ok']} ok, {counts['failed']} failed{pending}")
        for failure in hooks["recent_failures"]:
            print(f"  {failure['output']}: {failure['error']}")
    return 0


def _install_service(args: argparse.Namespace) -> int:
    from lowkeyd.daemon.system.install import install_service

    config_path = (args.config or default_config_path()).expanduser().resolve()
    config = load_config(config_path)  # a service that cannot start is no use: refuse a bad config now
    # Always named: the service's environment may not have the LOWKEYD_CONFIG_DIR that found it here.
    argv = [sys.executable, "-m", "lowkeyd", "run", "--config", str(config_path)]
    # The outbox and its staging folder beside it, where the sandbox would leave them read-only.
    writable = [] if config.outbox.is_relative_to(Path.home()) else [config.outbox.parent]
    plan = install_service(argv, writable=writable, cpu_only=config.protection.device == "cpu", write=not args.print_only)
    if plan.path.suffix == ".service":
        from lowkeyd.daemon.system.systemd import hidden_by_private_tmp

        used = {f"source {source.name}:": source.path for source in config.sources}
        used |= {f"API job root {root.name}:": root.path for root in config.api.job_roots}
        used |= {"the outbox": config.outbox, "the Python environment": Path(sys.prefix), "the config": config_path}
        for warning in hidden_by_private_tmp(used):
            print(f"warning: {warning}", file=sys.stderr)
    if args.print_only:
        sys.stdout.write(plan.content)
        return 0
    print(f"wrote {plan.path}")
    if not args.enable:
        print("start it now and at every login with:")
        for command in plan.commands:
            print("  " + shlex.join(command))
        return 0
    for command in plan.commands:
        print("$ " + shlex.join(command))
        done = subprocess.run(command, check=False)
        if done.returncode != 0:
            raise LowkeydError(f"`{shlex.join(command)}` failed (exit {done.returncode})")
    return 0
