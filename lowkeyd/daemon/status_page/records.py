"""The status page's questions to the state database: recent photos, what is waiting, what failed, counts.

Asked on a read-only connection of its own, so a page being rendered never
waits on (or holds up) the daemon's writes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from lowkeyd.daemon.state import FileRecord, StateDB, Status

# The page's status filter: a name in the URL -> the SQL condition on the files table.
FILTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "cloaked": ("status = ? AND outcome = ?", (Status.DONE.value, "cloaked")),
    "no_face": ("status = ? AND outcome = ?", (Status.DONE.value, "no_face")),
    "already_cloaked": ("status = ? AND outcome = ?", (Status.DONE.value, "already_cloaked")),
    "failed": ("status = ?", (Status.FAILED.value,)),
    "held": ("status = ?", (Status.HELD.value,)),
    "retry": ("status = ?", (Status.RETRY.value,)),
    "waiting": ("status IN (?, ?, ?)", (Status.QUEUED.value, Status.PROCESSING.value, Status.STRONGER.value)),
}


@dataclass(frozen=True)
class Totals:
    photos: int
    faces: int
    seconds: float  # time spent cloaking (duplicates reused cost none)


@dataclass(frozen=True)
class Page:
    records: list[FileRecord]
    number: int
    pages: int
    total: int


class Records(StateDB):
    """The state database, read-only, with the page's own questions."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, readonly=True)

    def _records(self, sql: str, params: tuple[Any, ...] = ()) -> list[FileRecord]:
        return [FileRecord._from_row(row) for row in self._query(sql, params)]

    def sources(self) -> list[str]:
        return [row[0] for row in self._query("SELECT DISTINCT source FROM files ORDER BY source")]

    def recent(self, *, page: int, per_page: int, source: str | None, status: str | None) -> Page:
        """Newest first; ``status`` is one of :data:`FILTERS`' names (validated by the caller)."""
        conditions: list[str] = []
        params: list[Any] = []
        if source:
            conditions.append("source = ?")
            params.append(source)
        if status:
            condition, values = FILTERS[status]
            conditions.append(condition)
            params.extend(values)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        total = int(self._query(f"SELECT COUNT(*) FROM files {where}", tuple(params))[0][0])
        pages = max(1, -(-total // per_page))
        number = min(max(1, page), pages)
        records = self._records(
            f"SELECT * FROM files {where} ORDER BY updated DESC, rel_path LIMIT ? OFFSET ?",
            (*params, per_page, (number - 1) * per_page),
        )
        return Page(records, number, pages, total)

    def in_progress(self) -> list[FileRecord]:
        """Being cloaked first, then waiting in the queue, then waiting for a retry or a stronger cloak (soonest first)."""
        return self._records(
            "SELECT * FROM files WHERE status IN (?, ?, ?, ?) ORDER BY "
            "CASE status WHEN ? THEN 0 WHEN ? THEN 1 ELSE 2 END, COALESCE(next_attempt, updated)",
            (Status.PROCESSING.value, Status.QUEUED.value, Status.RETRY.value, Status.STRONGER.value,
             Status.PROCESSING.value, Status.QUEUED.value),
        )

    def failures(self, limit: int = 50) -> list[FileRecord]:
        """Photos failed or held back, never published; newest first."""
        return self._records(
            "SELECT * FROM files WHERE status IN (?, ?) ORDER BY updated DESC LIMIT ?",
            (Status.FAILED.value, Status.HELD.value, limit),
        )

    def totals(self, since: float) -> Totals:
        """Photos finished since ``since`` (Unix time), their faces and cloaking time; duplicates count once."""
        row = self._query(
            "SELECT COUNT(*), COALESCE(SUM(faces), 0), COALESCE(SUM(seconds), 0) FROM files "
            "WHERE status = ? AND updated >= ? AND duplicate_of IS NULL",
            (Status.DONE.value, since),
        )[0]
        return Totals(int(row[0]), int(row[1]), float(row[2]))


def local_midnight(now: float | None = None) -> float:
    """The Unix time at which today began, here."""
    today = datetime.fromtimestamp(time.time() if now is None else now)
    return today.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
