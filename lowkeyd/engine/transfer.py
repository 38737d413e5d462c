"""What the holdout bench measured: the honest answer to "does the cloak work on a recogniser nobody ran?".

A cloak is checked per photo against the recognisers lowkeyd has, but every
one of them is (or can be) an attack member, so such a check is white-box: it
says the attack did its job, not that it transfers. What does say so is
``lowkeyd bench --holdout``: leave-one-out over every recogniser, each judged
on cloaks made without it. Its figures for the shipped presets are stored in
``transfer.json`` beside this module (the bench's ``--json`` output) and quoted
wherever a cloak is reported.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from functools import cache
from importlib.resources import files


@dataclass(frozen=True)
class TransferEstimate:
    preset: str
    folds: int
    faces: int
    self_social: float  # mean over folds: fraction of faces the held-out recogniser no longer matches
    self_social_worst: float  # the worst fold's
    cross_social: float  # mean over folds, the cloaked face against the person's other clean photos

    def short(self) -> str:
        return (
            f"unseen recognisers miss {100 * self.self_social:.0f}% of faces "
            f"(holdout estimate, worst fold {100 * self.self_social_worst:.0f}%)"
        )

    def describe(self) -> str:
        return (
            f"holdout estimate for preset {self.preset!r} (leave-one-out over {self.folds} recognisers, "
            f"{self.faces} sample faces, after resize + JPEG): an unseen recogniser fails to match "
            f"{100 * self.self_social:.0f}% of faces against their own original (worst fold "
            f"{100 * self.self_social_worst:.0f}%) and {100 * self.cross_social:.0f}% against other photos"
        )


@cache
def _measured() -> dict[str, list[dict]]:
    path = files("lowkeyd.engine") / "transfer.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def transfer_estimate(preset: str) -> TransferEstimate | None:
    """The holdout bench's figures for a shipped preset; None for a preset it has not measured."""
    folds = _measured().get(preset)
    if not folds:
        return None
    social = [f["self_social"] for f in folds]
    return TransferEstimate(
        preset,
        len(folds),
        folds[0]["faces"],
        statistics.mean(social),
        min(social),
        statistics.mean(f["cross_social"] for f in folds),
    )
