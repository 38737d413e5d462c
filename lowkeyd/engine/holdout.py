"""Leave-one-out transfer: attack with every recogniser but one, judge with the one left out.

A cloak always beats the models it was computed against; what protects a
person is whether it beats a recogniser nobody ran it against. Each fold
holds one recogniser out of the attack and judges the cloak with it alone
(dlib through its own runtime and landmarks), on the two things a scraper
can do: match the cloaked face against the same photo's original (self, the
closest probe anyone can have) and against the person's other, clean photos
(cross-photo). Both plain and after the social pipeline (1080 px, JPEG q80).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from lowkeyd.engine.cloak import Cloaker
from lowkeyd.engine.evaluate import Evaluator


@dataclass(frozen=True)
class Subject:
    """A photo and who is in it (photos of one identity are each other's cross-photo gallery)."""

    name: str
    rgb: np.ndarray
    identity: str


@dataclass
class Fold:
    """One held-out recogniser's verdict on cloaks made without it.

    The lists hold the held-out judge's margin per face or per probe/gallery
    pair: > 0 means it no longer matches (``inf`` when the face is not even
    found again).
    """

    heldout: str
    members: tuple[str, ...]
    self_plain: list[float] = field(default_factory=list)
    self_social: list[float] = field(default_factory=list)
    cross_plain: list[float] = field(default_factory=list)
    cross_social: list[float] = field(default_factory=list)
    lpips: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    seconds: float = 0.0
    faces: int = 0

    @staticmethod
    def protected(margins: Sequence[float]) -> float:
        """Fraction of ``margins`` past the held-out judge's threshold (NaN with none)."""
        return sum(m > 0 for m in margins) / len(margins) if margins else math.nan

    @staticmethod
    def mean_margin(margins: Sequence[float]) -> float:
        finite = [m for m in margins if math.isfinite(m)]
        return statistics.mean(finite) if finite else math.nan

    @property
    def seconds_per_face(self) -> float:
        return self.seconds / self.faces if self.faces else math.nan

    def summary(self) -> dict[str, object]:
        """The fold's headline figures (JSON-ready)."""
        return {
            "heldout": self.heldout,
            "members": list(self.members),
            "self_plain": self.protected(self.self_plain),
            "self_social": self.protected(self.self_social),
            "cross_plain": self.protected(self.cross_plain),
            "cross_social": self.protected(self.cross_social),
            "margin_social": self.mean_margin(self.self_social),
            "lpips": statistics.mean(self.lpips) if self.lpips else math.nan,
            "seconds_per_face": self.seconds_per_face,
            "steps": statistics.mean(self.steps) if self.steps else math.nan,
            "faces": len(self.self_plain),
        }


def holdout(
    cloaker: Cloaker,
    subjects: Sequence[Subject],
    *,
    heldout: Sequence[str] | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> list[Fold]:
    """One :class:`Fold` per recogniser in ``heldout`` (default: every member of ``cloaker``).

    ``cloaker`` holds every recogniser, resident; each fold attacks with all of them
    but the held-out one (its preset unchanged) and judges with that one alone.
    """
    evaluator = Evaluator(cloaker.resident)
    names = [m.name for m in cloaker.models]
    faces = {s.name: evaluator.detector.detect(s.rgb) for s in subjects}
    before = {s.name: evaluator.identities(s.rgb, faces[s.name]) for s in subjects}
    # Each clean photo's largest face (detect() sorts largest first) is its cross-photo gallery entry.
    gallery = {n: {k: v[0] for k, v in ids.items()} if faces[n] else None for n, ids in before.items()}
    folds = []
    for out in heldout or names:
        members = tuple(n for n in names if n != out)
        attack = cloaker.with_members(members)
        fold = Fold(out, members)
        for subject in subjects:
            start = time.perf_counter()
            result = attack.cloak(subject.rgb)
            fold.seconds += time.perf_counter() - start
            fold.faces += result.cloaked
            fold.steps.extend(f.steps for f in result.faces if f.status == "cloaked")
            worst = {}
            for social, margins, cross in ((False, fold.self_plain, fold.cross_plain), (True, fold.self_social, fold.cross_social)):
                check = evaluator.compare(subject.rgb, result.rgb, social=social, faces=faces[subject.name], before=before[subject.name])
                photo = [f.margins[out] for f in check.faces]
                margins.extend(photo)
                worst[social] = min(photo, default=math.nan)
                if not social:
                    fold.lpips.extend(f.lpips for f in check.faces if f.lpips is not None)
                cross.extend(_cross_margins(evaluator, out, subject, check.probe, subjects, gallery))
            progress(
                f"held out {out:>14} {subject.name:>14}: margin {worst[False]:+.3f} (social {worst[True]:+.3f}), "
                f"{fold.seconds:.0f} s so far"
            )
        folds.append(fold)
    return folds


def _cross_margins(
    evaluator: Evaluator,
    judge: str,
    subject: Subject,
    probe: dict[str, np.ndarray] | None,
    subjects: Sequence[Subject],
    gallery: dict[str, dict[str, np.ndarray] | None],
) -> list[float]:
    """The judge's margin for the cloaked photo's largest face (``probe``) against each clean photo of the same person."""
    others = [s for s in subjects if s.identity == subject.identity and s.name != subject.name and gallery[s.name]]
    if probe is None:
        return [math.inf] * len(others)  # no face found again: nothing to match
    return [evaluator.match(probe, gallery[other.name])[1][judge] for other in others]
