"""One photo, one seed: every way in to the engine writes the same bytes.

``PhotoProtector.load`` is the one door the command line and the daemon use;
this holds it to that: ``lowkeyd cloak --no-daemon`` (a real process) and the
protector built in process write byte-identical files, and both match the
engine's own pixels. (The daemon's API against ``--no-daemon`` is compared in
test_api_daemon.py, where a daemon already runs.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from daemon_fixtures import FAST_ATTACK, face_photo
from lowkeyd.photo import read_photo
from lowkeyd.pipeline import PhotoProtector
from lowkeyd.settings import ProtectionSettings

pytestmark = pytest.mark.slow

LOWKEYD = Path(sys.executable).parent / "lowkeyd"
THREADS = 1  # the same in both processes: a sum over another number of threads may round differently


def test_the_cli_and_the_protector_write_the_same_bytes(tmp_path: Path) -> None:
    src = tmp_path / "photo.jpg"
    src.write_bytes(face_photo(1))
    overrides = [f"--set={k}={v}" for k, v in FAST_ATTACK.items()]
    done = subprocess.run(
        [str(LOWKEYD), "cloak", str(src), "-o", str(tmp_path / "cli"), "--no-daemon", "--device", "cpu", *overrides],
        capture_output=True, text=True, timeout=900, env={**os.environ, "LOWKEYD_THREADS": str(THREADS)},
    )
    assert done.returncode == 0, done.stderr

    threads = torch.get_num_threads()
    try:
        protector = PhotoProtector.load(ProtectionSettings.resolve("default", FAST_ATTACK, device="cpu"), threads=THREADS)
        outcome = protector.protect_file(src, tmp_path / "door.jpg")
        engine = protector.cloaker.cloak(read_photo(src).rgb)
    finally:
        torch.set_num_threads(threads)

    assert outcome.status == "cloaked" and outcome.faces_cloaked == 1
    # The outcome names the preset that ran and carries its every setting.
    assert outcome.preset == protector.preset and outcome.preset.steps == FAST_ATTACK["steps"]
    assert outcome.preset.name.startswith("default(")
    assert (tmp_path / "door.jpg").read_bytes() == (tmp_path / "cli" / "photo.jpg").read_bytes()
    # What was written is the engine's result, encoded: the door adds nothing of its own to the pixels.
    written = read_photo(tmp_path / "door.jpg").rgb.astype(int)
    assert np.abs(written - engine.rgb.astype(int)).mean() < 2  # JPEG's rounding only
    assert not np.array_equal(engine.rgb, read_photo(src).rgb)
