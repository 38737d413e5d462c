"""What the status page shows of a finished photo that the state database does not keep.

The state database records what the daemon needs to decide (status, counts,
the output); the page also wants each face's box and per-member similarities,
what the published file left out, the preset and the message. They are kept
here, one row per source file, in a database of their own in the state dir
(0600), written by the worker thread as each photo is published.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lowkeyd.daemon.state import StateError, connect
from lowkeyd.paths import state_dir

if TYPE_CHECKING:
    from lowkeyd.pipeline import Outcome

JOURNAL_NAME = "status-page.sqlite3"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS details (
    source TEXT NOT NULL,
    rel_path TEXT NOT NULL,
    recorded REAL NOT NULL,
    preset TEXT NOT NULL,
    status TEXT NOT NULL,
    message TEXT NOT NULL,
    seconds REAL NOT NULL,
    dropped TEXT NOT NULL,
    faces TEXT NOT NULL,
    PRIMARY KEY (source, rel_path)
);
"""


def default_journal_path() -> Path:
    return state_dir() / JOURNAL_NAME


@dataclass(frozen=True)
class FaceDetail:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in upright photo pixels
    size: float
    status: str  # "cloaked" or "too_small"
    similarity: dict[str, float]
    thresholds: dict[str, float]
    lpips: float | None

    @property
    def protected_against(self) -> dict[str, bool]:
        return {m: s < self.thresholds[m] for m, s in self.similarity.items() if m in self.thresholds}


@dataclass(frozen=True)
class PhotoDetail:
    recorded: float
    preset: str
    status: str
    message: str
    seconds: float
    dropped: tuple[str, ...]
    faces: tuple[FaceDetail, ...]


def _private_file(path: Path) -> None:
    """Create ``path`` empty and 0600 if it is missing, so sqlite never makes it with the umask's mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


class Journal:
    """Per-photo details for the status page; safe to share between threads."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_journal_path()
        try:
            _private_file(self.path)
        except OSError as exc:
            raise StateError(f"cannot create {self.path}: {exc.strerror or exc}") from None
        self._db = connect(self.path, readonly=False, what="the status page's journal")
        try:
            with self._db:
                self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StateError(f"cannot open the status page's journal {self.path}: {exc}") from None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def record(self, source: str, rel_path: str, outcome: Outcome) -> None:
        faces = [
            {
                "box": list(face.box),
                "size": face.size,
                "status": face.status,
                "similarity": face.similarity,
                "thresholds": face.thresholds,
                "lpips": face.lpips,
            }
            for face in outcome.faces
        ]
        row = (
            source, rel_path, time.time(), outcome.preset.name, outcome.status, outcome.message, outcome.seconds,
            json.dumps(list(outcome.dropped)), json.dumps(faces),
        )
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO details VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)

    def get(self, source: str, rel_path: str) -> PhotoDetail | None:
        with self._lock:
            row = self._db.execute(
                "SELECT recorded, preset, status, message, seconds, dropped, faces FROM details "
                "WHERE source = ? AND rel_path = ?",
                (source, rel_path),
            ).fetchone()
        if row is None:
            return None
        recorded, preset, status, message, seconds, dropped, faces = row
        return PhotoDetail(
            recorded, preset, status, message, seconds, tuple(json.loads(dropped)),
            tuple(_face(f) for f in json.loads(faces)),
        )


def _face(data: dict[str, Any]) -> FaceDetail:
    return FaceDetail(
        tuple(data["box"]), data["size"], data["status"], data["similarity"], data["thresholds"], data["lpips"]
    )
