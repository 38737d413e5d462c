"""A JPEG's scan mode: baseline or progressive with its own scan script, and its restart interval.

libjpeg writes DCT coefficients (``jpeglib``) as one baseline scan without restart markers,
so a progressive photo would come back baseline and lose the restart interval that lets a
damaged file resynchronise. ``jpegtran`` rewrites coefficients losslessly in any scan order;
given the source's own script (read from its SOS headers) and interval, the output has the
source's scan mode exactly. Where ``jpegtran`` is not installed the output stays baseline and
the read reports it (:func:`lost_in_writing`).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lowkeyd.photo.containers import SOF_MARKERS, SOS, jpeg_layout

_PROGRESSIVE_FRAMES = {0xC2, 0xC6, 0xCA, 0xCE}
_DRI = 0xDD
# jpegtran rewrites a 12-megapixel photo in well under a second; this only bounds a hang.
_TIMEOUT_S = 120


@dataclass(frozen=True)
class ScanMode:
    """How a JPEG's coefficients are laid out in scans."""

    progressive: bool
    script: tuple[str, ...]  # jpegtran -scans entries, one per scan: "components: Ss-Se, Ah, Al;"
    restart: int  # MCUs between restart markers (DRI); 0 for none

    @property
    def plain(self) -> bool:
        """True for what libjpeg writes by itself: one baseline scan, no restart markers."""
        return not self.progressive and not self.restart


def scan_mode(data: bytes) -> ScanMode:
    """The scan mode of a JPEG stream; ValueError for a malformed one."""
    layout = jpeg_layout(data)
    components: list[int] = []
    progressive, restart = False, 0
    script: list[str] = []
    for marker, payload in layout.segments:
        if marker in SOF_MARKERS and len(payload) >= 6:
            progressive = marker in _PROGRESSIVE_FRAMES
            components = [payload[6 + 3 * i] for i in range(payload[5]) if 6 + 3 * i < len(payload)]
        elif marker == _DRI and len(payload) >= 2 and not restart:
            restart = int.from_bytes(payload[:2], "big")
        elif marker == SOS:
            script.append(_script_entry(payload, components))
    return ScanMode(progressive, tuple(script), restart)


def _script_entry(sos: bytes, components: list[int]) -> str:
    """One scan as jpegtran's -scans syntax: frame indexes of its components, spectral band, bit positions."""
    count = sos[0]
    if len(sos) < 4 + 2 * count:
        raise ValueError("JPEG scan header is too short")
    try:
        indexes = [components.index(sos[1 + 2 * i]) for i in range(count)]
    except ValueError as exc:
        raise ValueError("JPEG scan names a component its frame does not have") from exc
    start, end, bits = sos[1 + 2 * count], sos[2 + 2 * count], sos[3 + 2 * count]
    return f"{' '.join(map(str, indexes))}: {start}-{end}, {bits >> 4}, {bits & 15};"


def available() -> bool:
    """True when jpegtran is installed to restore a scan mode."""
    return shutil.which("jpegtran") is not None


def lost_in_writing(mode: ScanMode) -> str | None:
    """What a cloaked copy of a JPEG with this scan mode will not keep, in words; None if nothing."""
    if mode.plain or available():
        return None
    parts = (["progressive scans"] if mode.progressive else []) + (["restart markers"] if mode.restart else [])
    return f"the {' and '.join(parts)} of a cloaked copy (jpegtran is not installed: it is written baseline)"


def restore(path: Path, mode: ScanMode) -> None:
    """Rewrite the JPEG at ``path`` losslessly in ``mode``'s scans and restart interval, where jpegtran is there."""
    if mode.plain or not available():
        return
    command = ["jpegtran", "-copy", "none", "-optimize"]
    if mode.progressive:
        script = path.with_suffix(".scans")
        script.write_text("\n".join(mode.script) + "\n")
        command += ["-scans", str(script)]
    if mode.restart:
        command += ["-restart", f"{mode.restart}b"]
    rewritten = path.with_suffix(".scanned.jpg")
    command += ["-outfile", str(rewritten), str(path)]
    try:
        result = subprocess.run(command, capture_output=True, timeout=_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ValueError("jpegtran did not finish restoring the scan mode") from exc
    if result.returncode != 0:
        raise ValueError(f"jpegtran could not restore the scan mode: {result.stderr.decode(errors='replace').strip()}")
    rewritten.replace(path)
