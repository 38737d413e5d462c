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
from lowkeyd.engine.social import social_pipeline


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
    evaluator = Evaluator.sharing(cloaker)
    names = [m.name for m in cloaker.models]
    faces = {s.name: evaluator.detector.detect(s.rgb) for s in subjects}
    before = {s.name: evaluator.identities(s.rgb, faces[s.name]) for s in subjects}
    gallery = {s.name: evaluator.largest_face(s.rgb) for s in subjects}
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
            for social, margins in ((False, fold.self_plain), (True, fold.self_social)):
                check = evaluator.compare(subject.rgb, result.rgb, social=social, faces=faces[subject.name], before=before[subject.name])
                margins.extend(f.margins[out] for f in check.faces)
                if not social:
                    fold.lpips.extend(f.lpips for f in check.faces if f.lpips is not None)
            _cross(evaluator, out, subject, result.rgb, subjects, gallery, fold)
            progress(
                f"held out {out:>14} {subject.name:>14}: margin {min(fold.self_plain[-len(faces[subject.name]):] or [math.nan]):+.3f} "
                f"(social {min(fold.self_social[-len(faces[subject.name]):] or [math.nan]):+.3f}), {fold.seconds:.0f} s so far"
            )
        folds.append(fold)
    return folds


def _cross(
    evaluator: Evaluator,
    judge: str,
    subject: Subject,
    cloaked: np.ndarray,
    subjects: Sequence[Subject],
    gallery: dict[str, dict[str, np.ndarray] | None],
    fold: Fold,
) -> None:
    """The cloaked photo's face against each clean photo of the same person, plain and social."""
    others = [s for s in subjects if s.identity == subject.identity and s.name != subject.name and gallery[s.name]]
    if not others:
        return
    for margins, probe_rgb in ((fold.cross_plain, cloaked), (fold.cross_social, social_pipeline(cloaked))):
        probe = evaluator.largest_face(probe_rgb)
        for other in others:
            if probe is None:
                margins.append(math.inf)
                continue
            _, margin = evaluator.match(probe, gallery[other.name])
            margins.append(margin[judge])
