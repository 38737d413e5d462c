"""What the status page shows of a finished photo that the state database does not keep.

The state database's files table records what the daemon needs to decide
(status, counts, the output); the page also wants each face's box and
per-member similarities, what the published file left out, the preset and the
message. They are kept here, one row per source file, in a table of their own
in the state database, written by the worker thread as each photo is published.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lowkeyd.daemon.store import Store

if TYPE_CHECKING:
    from lowkeyd.pipeline import Outcome


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


class Journal(Store):
    """Per-photo details for the status page; safe to share between threads."""

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
        self._write("INSERT OR REPLACE INTO details VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)

    def get(self, source: str, rel_path: str) -> PhotoDetail | None:
        rows = self._query(
            "SELECT recorded, preset, status, message, seconds, dropped, faces FROM details "
            "WHERE source = ? AND rel_path = ?",
            (source, rel_path),
        )
        if not rows:
            return None
        recorded, preset, status, message, seconds, dropped, faces = rows[0]
        return PhotoDetail(
            recorded, preset, status, message, seconds, tuple(json.loads(dropped)),
            tuple(_face(f) for f in json.loads(faces)),
        )


def _face(data: dict[str, Any]) -> FaceDetail:
    return FaceDetail(
        tuple(data["box"]), data["size"], data["status"], data["similarity"], data["thresholds"], data["lpips"]
    )
