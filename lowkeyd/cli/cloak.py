"""``lowkeyd cloak``: protect photo files (or folders of them) into an output folder."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lowkeyd.cli.options import add_engine_options
from lowkeyd.engine.presets import parse_overrides
from lowkeyd.errors import LowkeydError
from lowkeyd.photo import is_photo_path
from lowkeyd.settings import BelowTargetPolicy, NoFacePolicy, ProtectionSettings

if TYPE_CHECKING:
    from lowkeyd.pipeline import PhotoProtector
    from lowkeyd.serving.api.client import DaemonProtector

STDIO = "-"


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cloak",
        help="cloak every face in photos",
        description="Write a cloaked copy of each photo (same name, same format, metadata kept) into OUTDIR. "
        "Folders are searched recursively and mirrored under OUTDIR. '-' reads a photo from stdin / writes it to stdout.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="photo files or folders, or - for stdin")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder, or - for stdout")
    # None, not "default": an explicit choice must not be handed to a daemon that may run another preset.
    p.add_argument("--preset", default=None, help="attack preset: paper, default or strong (default: default)")
    add_engine_options(p)
    p.add_argument(
        "--keep-gps", action="store_true", default=None, help="keep GPS position in EXIF and XMP (removed by default)"
    )
    p.add_argument(
        "--mark", action="store_true", default=None,
        help="tag the written photos as lowkeyd's (XMP: version, preset, models); by default they say nothing of lowkeyd",
    )
    p.add_argument(
        "--no-face", choices=get_args(NoFacePolicy), default=None,
        help="photos without a face: copy sanitised (default), or skip",
    )
    p.add_argument(
        "--below-target",
        choices=get_args(BelowTargetPolicy),
        default=None,
        help="a face the visibility budget lets past every recogniser but short of the preset's target margin: "
        "publish it (default) or hold the photo back",
    )
    p.add_argument(
        "--no-daemon",
        action="store_true",
        help="load the models here even when a lowkeyd daemon runs (by default its loaded models do the work, "
        "with its config's settings, unless an engine option above is given)",
    )
    p.add_argument(
        "--remote",
        metavar="URL",
        help="send the photos to a lowkeyd service (lowkeyd serve, or a daemon's TCP API) and write its answers here; "
        "its own preset and policies apply",
    )
    p.add_argument(
        "--token-file", type=Path, default=None,
        help="the --remote service's bearer token (default: $LOWKEYD_API_TOKEN, else this machine's api-token file)",
    )
    p.add_argument(
        "--ca-file", type=Path, default=None,
        help="check an https:// --remote's certificate against this CA file (e.g. the service's self-signed certificate)",
    )
    p.set_defaults(func=run)


def _jobs(inputs: list[str], outdir: Path) -> list[tuple[Path, Path]]:
    """(source, destination) pairs; folders mirrored below OUTDIR under their own name."""
    jobs: list[tuple[Path, Path]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_photo_path(p))
            jobs.extend((p, outdir / path.resolve().name / p.relative_to(path)) for p in found)
        elif path.exists():
            jobs.append((path, outdir / path.name))
        else:
            raise LowkeydError(f"{item}: no such file or folder")
    seen: dict[Path, Path] = {}
    for src, dest in jobs:
        if dest in seen:
            raise LowkeydError(f"{src} and {seen[dest]} would both be written to {dest}")
        seen[dest] = src
    return jobs


def _remote(args: argparse.Namespace, asked: bool) -> DaemonProtector:
    from lowkeyd.daemon.config import RemoteConfig
    from lowkeyd.daemon.remote import remote_client
    from lowkeyd.serving.api.client import DaemonProtector

    if asked or args.no_daemon:
        raise LowkeydError("--remote takes no engine or policy option: the service applies its own")
    try:
        config = RemoteConfig(url=args.remote, token_file=args.token_file, ca_file=args.ca_file)
    except ValueError:
        raise LowkeydError(f"--remote {args.remote}: expected http://HOST:PORT or https://...") from None
    client = remote_client(config)
    client.status()  # down, or a wrong token: one clear error before any photo
    print(f"lowkeyd: using the lowkeyd service at {client.where}", file=sys.stderr)
    return DaemonProtector(client)


def _daemon(args: argparse.Namespace) -> DaemonProtector | None:
    """The running daemon, when it may do the work: not forced off, and no engine setting asked for."""
    given = (args.preset, args.device, args.keep_gps, args.mark, args.no_face, args.below_target)
    asked = bool(args.overrides) or any(option is not None for option in given)
    if args.remote:
        return _remote(args, asked)
    if args.no_daemon or asked:
        return None
    from lowkeyd.serving.api.client import DaemonProtector, find_daemon

    client = find_daemon()
    if client is None:
        return None
    print(f"lowkeyd: using the running daemon ({client.where})", file=sys.stderr)
    return DaemonProtector(client)


def _protector(args: argparse.Namespace) -> PhotoProtector | DaemonProtector:
    daemon = _daemon(args)
    if daemon is not None:
        return daemon
    from lowkeyd.pipeline import PhotoProtector

    settings = ProtectionSettings.resolve(
        args.preset or "default", parse_overrides(args.overrides), device=args.device,
        strip_gps=False if args.keep_gps else None, no_face=args.no_face, below_target=args.below_target, mark=args.mark,
    )
    return PhotoProtector.load(settings)


def _stdio(args: argparse.Namespace) -> int:
    if args.inputs != [STDIO] or args.output != STDIO:
        raise LowkeydError("'-' works as the only INPUT together with -o - (stdin to stdout)")
    data = sys.stdin.buffer.read()
    result, outcome = _protector(args).protect_bytes(data)
    print(f"lowkeyd: {outcome.message}", file=sys.stderr)
    if result is None:
        return 0
    sys.stdout.buffer.write(result)
    sys.stdout.buffer.flush()
    return 0


def run(args: argparse.Namespace) -> int:
    if STDIO in args.inputs or args.output == STDIO:
        return _stdio(args)
    outdir = Path(args.output)
    jobs = _jobs(args.inputs, outdir)
    if not jobs:
        raise LowkeydError("no photos found in the inputs")
    console = Console(stderr=True)
    start = time.perf_counter()
    with console.status("loading the face models..."):
        protector = _protector(args)
    faces = failed = 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("cloaking", total=len(jobs))
        for src, dest in jobs:
            progress.update(task, description=f"cloaking {src.name}")
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                outcome = protector.protect_file(src, dest)
            except LowkeydError as exc:
                failed += 1
                progress.console.print(f"[red]✗[/] {exc}", highlight=False)
            else:
                faces += outcome.faces_cloaked
                where = f" -> {outcome.written}" if outcome.written else ""
                progress.console.print(f"[green]✓[/] {src}: {outcome.message} ({outcome.seconds:.1f} s){where}", highlight=False)
            progress.advance(task)
    seconds = time.perf_counter() - start
    console.print(
        f"{len(jobs)} photo{'s' * (len(jobs) != 1)}, {faces} face{'s' * (faces != 1)} cloaked, "
        f"{failed} failed, {seconds:.1f} s",
        highlight=False,
    )
    return 1 if failed else 0
