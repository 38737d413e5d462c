"""Leave-one-out transfer: attack with every recogniser but one, judge with the one left out.

A cloak always beats the models it was computed against; what protects a
person is whether it beats a recogniser nobody ran it against. Each fold
holds one recogniser out of the attack and judges the cloak with it alone
(dlib through its own runtime and landmarks), on the two things a scraper
can do, face by face: match the cloaked face against the same photo's
original (self-match, the closest probe anyone can have) and against the
clean faces of the same person made from other source photos (cross-photo;
see :func:`lowkeyd.engine.testset.cross_gallery`). Both plain and after the
social pipeline (1080 px, JPEG q80).

Each face also gets the visibility measures the issue's judge takes: the
engine's face LPIPS, LPIPS on the box grown by 25% (one crop), the 99.9th
percentile of changed pixels, and on black-and-white photos the colour the
cloak added; each photo its PSNR. Every figure is grouped by the photo's
category and overall, each rate with its n and Wilson 95% interval, each
visibility measure with its worst face.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from lowkeyd.engine.cloak import Cloaker, CloakResult
from lowkeyd.engine.evaluate import JUDGE_GROW, Evaluator, FaceCheck, iou
from lowkeyd.engine.measures import added_colour, changed_percentile, grown_box, is_grey
from lowkeyd.engine.testset import FaceId, Subject, cross_gallery
from lowkeyd.engine.transfer import Rate
from lowkeyd.errors import LowkeydError


@dataclass
class FaceRecord:
    """One face's figures in one fold. Margins: > 0 means the held-out judge no longer matches (``inf``: face not found again)."""

    id: FaceId
    size: float
    grey: bool  # the original photo is black-and-white, decided from its pixels
    self_plain: float
    self_social: float
    cross_plain: list[float]  # one per gallery face
    cross_social: list[float]
    gallery: list[str]
    lpips: float | None  # the engine's measure: phase-averaged, box + 10%
    judge_lpips: float  # box + 25%, one crop
    changed_p999: float  # levels, over the changed pixels of the box + 25%
    added_colour: int | None  # grey photos only: the largest colour in the box + 25% of the cloaked copy
    steps: int | None  # None when the face was not attacked (too small)

    @property
    def name(self) -> str:
        return self.id.name

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out.update(out.pop("id"), name=self.name)
        return out


@dataclass
class PhotoRecord:
    photo: str
    category: str
    grey: bool
    psnr: float
    changed_p999: float
    added_colour: int | None
    seconds: float
    cloaked: int


@dataclass(frozen=True)
class Worst:
    """A measure's worst value over a group and whose it is."""

    value: float
    name: str

    @classmethod
    def of(cls, pairs: Sequence[tuple[float | None, str]], pick: Callable = max) -> Worst | None:
        present = [(v, n) for v, n in pairs if v is not None and not math.isnan(v)]
        return cls(*pick(present, key=lambda p: p[0])) if present else None


@dataclass(frozen=True)
class Group:
    """A fold's figures over a group of faces (one category, or all)."""

    faces: int
    self_plain: Rate
    self_social: Rate
    cross_plain: Rate
    cross_social: Rate
    worst_margin: Worst | None  # the face closest to being matched, after the social pipeline
    lpips_mean: float
    lpips: Worst | None
    judge_lpips_mean: float
    judge_lpips: Worst | None
    changed_p999: Worst | None
    psnr: Worst | None  # the lowest photo
    added_colour: Worst | None  # the most colour added to a grey photo; None when there is none

    @classmethod
    def of(cls, faces: Sequence[FaceRecord], photos: Sequence[PhotoRecord]) -> Group:
        def mean(values: list[float | None]) -> float:
            present = [v for v in values if v is not None]
            return statistics.mean(present) if present else math.nan

        return cls(
            len(faces),
            Rate.of_margins(f.self_plain for f in faces),
            Rate.of_margins(f.self_social for f in faces),
            Rate.of_margins(m for f in faces for m in f.cross_plain),
            Rate.of_margins(m for f in faces for m in f.cross_social),
            Worst.of([(f.self_social, f.name) for f in faces if math.isfinite(f.self_social)], min),
            mean([f.lpips for f in faces]),
            Worst.of([(f.lpips, f.name) for f in faces]),
            mean([f.judge_lpips for f in faces]),
            Worst.of([(f.judge_lpips, f.name) for f in faces]),
            Worst.of([(f.changed_p999, f.name) for f in faces]),
            Worst.of([(p.psnr, p.photo) for p in photos], min),
            Worst.of([(p.added_colour, p.photo) for p in photos]),
        )

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out.update({k: getattr(self, k).as_dict() for k in ("self_plain", "self_social", "cross_plain", "cross_social")})
        return out


@dataclass
class Fold:
    """One held-out recogniser's verdict on cloaks made without it, face by face."""

    heldout: str
    members: tuple[str, ...]
    faces: list[FaceRecord] = field(default_factory=list)
    photos: list[PhotoRecord] = field(default_factory=list)

    @property
    def seconds_per_face(self) -> float:
        cloaked = sum(p.cloaked for p in self.photos)
        return sum(p.seconds for p in self.photos) / cloaked if cloaked else math.nan

    @property
    def steps(self) -> float:
        steps = [f.steps for f in self.faces if f.steps is not None]
        return statistics.mean(steps) if steps else math.nan

    def categories(self) -> list[str]:
        """The categories of the fold's photos, in the order they were run."""
        return list(dict.fromkeys(p.category for p in self.photos))

    def group(self, category: str | None = None) -> Group:
        """Figures over the faces of ``category`` (None: every face)."""
        return Group.of(
            [f for f in self.faces if category in (None, f.id.category)],
            [p for p in self.photos if category in (None, p.category)],
        )

    def summary(self) -> dict[str, object]:
        """Every figure of the fold, JSON-ready: per category and overall, and every face and photo."""
        return {
            "heldout": self.heldout,
            "members": list(self.members),
            "faces": len(self.faces),
            "seconds_per_face": self.seconds_per_face,
            "steps": self.steps,
            "groups": {"all": self.group().as_dict()} | {c: self.group(c).as_dict() for c in self.categories()},
            "face_records": [f.as_dict() for f in self.faces],
            "photo_records": [asdict(p) for p in self.photos],
        }


def holdout(
    cloaker: Cloaker,
    subjects: Sequence[Subject],
    *,
    heldout: Sequence[str] | None = None,
    gallery: Sequence[Subject] = (),
    progress: Callable[[str], None] = lambda _: None,
) -> list[Fold]:
    """One :class:`Fold` per recogniser in ``heldout`` (default: every member of ``cloaker``).

    ``cloaker`` holds every recogniser, resident; each fold attacks with all of them
    but the held-out one (its preset unchanged) and judges with that one alone.
    ``subjects`` are cloaked; the clean faces of ``gallery`` (default: ``subjects``)
    are the cross-photo gallery, so a run on a few photos is matched against the whole set.
    """
    evaluator = Evaluator(cloaker.resident)
    names = [m.name for m in cloaker.models]
    unknown = [n for n in heldout or () if n not in names]
    if unknown:
        raise LowkeydError(f"cannot hold out {unknown[0]!r}: not a recogniser of this run (choose from {', '.join(names)})")
    pool = {s.name: s for s in [*subjects, *gallery]}.values()
    assigned = {s.name: s.assign(evaluator.detector.detect(s.rgb)) for s in pool}
    faces = {n: [face for face, _ in pairs] for n, pairs in assigned.items()}
    before = {s.name: evaluator.identities(s.rgb, faces[s.name]) for s in pool}
    everyone = [fid for pairs in assigned.values() for _, fid in pairs]
    clean = {fid: {judge: v[fid.index] for judge, v in before[fid.photo].items()} for fid in everyone}
    grey = {s.name: is_grey(s.rgb) for s in subjects}
    folds = []
    for out in heldout or names:
        members = tuple(n for n in names if n != out)
        attack = cloaker.with_members(members)
        fold = Fold(out, members)
        for subject in subjects:
            start = time.perf_counter()
            result = attack.cloak(subject.rgb, luma_only=subject.grayscale)
            seconds = time.perf_counter() - start
            plain, social = (
                evaluator.compare(subject.rgb, result.rgb, social=s, faces=faces[subject.name], before=before[subject.name])
                for s in (False, True)
            )
            grey_photo = grey[subject.name]
            fold.photos.append(PhotoRecord(
                subject.name, subject.category, grey_photo, plain.psnr, changed_percentile(subject.rgb, result.rgb),
                added_colour(result.rgb) if grey_photo else None, seconds, result.cloaked,
            ))
            for (face, fid), p, s in zip(assigned[subject.name], plain.faces, social.faces, strict=True):
                others = cross_gallery(fid, everyone)
                xa, ya, xb, yb = grown_box(p.box, subject.rgb.shape, JUDGE_GROW)
                region = subject.rgb[ya:yb, xa:xb], result.rgb[ya:yb, xa:xb]
                fold.faces.append(FaceRecord(
                    fid, face.size, grey_photo, p.margins[out], s.margins[out],
                    [_cross_margin(evaluator, out, p, clean[g]) for g in others],
                    [_cross_margin(evaluator, out, s, clean[g]) for g in others],
                    [g.name for g in others],
                    p.lpips, evaluator.judge_lpips(subject.rgb, result.rgb, p.box), changed_percentile(*region),
                    added_colour(region[1]) if grey_photo else None, _steps(result, face.box),
                ))
            worst = min((f.self_social for f in fold.faces[-len(faces[subject.name]) :]), default=math.nan)
            progress(f"held out {out:>14} {subject.name:>22}: worst margin after social {worst:+.3f}, {seconds:.0f} s")
        folds.append(fold)
    return folds


def _cross_margin(evaluator: Evaluator, judge: str, cloaked: FaceCheck, clean: dict[str, np.ndarray]) -> float:
    """The judge's margin for a cloaked face (as found again) against one clean gallery face."""
    if cloaked.identity is None:
        return math.inf  # not found again: nothing to match
    return evaluator.match(cloaked.identity, clean)[1][judge]


def _steps(result: CloakResult, box: np.ndarray) -> int | None:
    """The attack's step count for the face at ``box`` (the cloaker's detector ran on its own)."""
    for face in result.faces:
        if face.status == "cloaked" and iou(np.asarray(face.box), np.asarray(box)) > 0.5:
            return face.steps
    return None
