#!/usr/bin/env python3
"""Peak memory and time of one photo in the daemon's fast lane, against its megapixels.

For each size, a solid-colour PNG (a few hundred KB on disk, the cheapest way to hand
the daemon many pixels) is read and written as the daemon's fast lane does it: decoded
under the pixel limit, looked at for faces by the engine's detector, and encoded. The
models are loaded first, once; before each photo the process's peak resident size is
reset (``/proc/self/clear_refs``), so each row is that photo's own peak above what was
resident before it. Prints a Markdown table and the bytes per pixel that
``lowkeyd.serving.memory`` assumes.

    scripts/pixel_memory.py                    # 5, 10, 20 and 40 megapixels
    scripts/pixel_memory.py --sizes 10,80      # more is slow, and needs the memory

Linux only (it reads /proc). A benchmark, not a test: run it on an otherwise quiet machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from PIL import Image


def _rss() -> tuple[int, int]:
    """(resident now, peak resident since the last reset) of this process, in bytes."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def _solid_png(folder: Path, megapixels: float) -> tuple[Path, int]:
    width = int((megapixels * 1e6 * 4 / 3) ** 0.5)
    height = int(megapixels * 1e6 / width)
    path = folder / f"solid-{megapixels:g}mp.png"
    Image.new("RGB", (width, height), (96, 128, 160)).save(path, compress_level=1)
    return path, width * height


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5,10,20,40", help="megapixels, comma-separated (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="one JSON object per size instead of the table")
    args = parser.parse_args()

    from lowkeyd.pipeline import PhotoProtector
    from lowkeyd.serving.memory import BYTES_PER_PIXEL, release_free_memory
    from lowkeyd.settings import ProtectionSettings

    protector = PhotoProtector.load(ProtectionSettings(device="cpu"), threads=args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for megapixels in (float(s) for s in args.sizes.split(",")):
            path, pixels = _solid_png(Path(folder), megapixels)
            protector.max_pixels = pixels
            release_free_memory()
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak (Linux 4.0+)
            before, _ = _rss()
            start = time.perf_counter()
            photo = protector.read(path)
            outcome = protector.protect_without_attack(photo, Path(folder) / f"out-{path.name}")
            seconds = time.perf_counter() - start
            _, peak = _rss()
            assert outcome is not None and outcome.status == "no_face", "a solid image has no face"
            del photo, outcome
            rows.append(
                {"megapixels": pixels / 1e6, "file_kb": path.stat().st_size / 1024, "peak_gib": (peak - before) / 2**30,
                 "bytes_per_pixel": (peak - before) / pixels, "seconds": seconds}
            )
            path.unlink()
            if args.json:
                print(json.dumps(rows[-1]), flush=True)
    if args.json:
        return
    print("| megapixels | PNG size | peak above resident | bytes/pixel | seconds |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['megapixels']:.1f} | {r['file_kb']:.0f} KB | {r['peak_gib']:.2f} GiB | {r['bytes_per_pixel']:.1f} "
            f"| {r['seconds']:.1f} |"
        )
    print(f"\nlowkeyd.serving.memory assumes {BYTES_PER_PIXEL} bytes a pixel.")


if __name__ == "__main__":
    main()
