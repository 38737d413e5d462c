"""What the holdout bench measured: the honest answer to "does the cloak work on a recogniser nobody ran?".

A cloak is checked per photo against the recognisers lowkeyd has, but every
one of them is (or can be) an attack member, so such a check is white-box: it
says the attack did its job, not that it transfers. What does say so is
``lowkeyd bench --holdout`` on the varied test set: leave-one-out over every
recogniser, each judged on cloaks made without it. Its counts for the shipped
presets are stored in ``transfer.json`` beside this module (made from the
bench's ``--json`` output by ``scripts/transfer_figures.py``) and quoted
wherever a cloak is reported, each with its number of faces and a Wilson 95%
interval, and the figure for the photo's own kind of face where it is known.

Each preset's figures carry a hash of the preset's fields: once a preset
changes, its stored figures describe another attack, and no estimate is
given until the bench is run again.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from lowkeyd.engine.measures import is_grey

if TYPE_CHECKING:
    import numpy as np

    from lowkeyd.engine.presets import Preset

# Two-sided 95%: the standard normal quantile 0.975.
Z95 = 1.959963984540054
# A face under this many pixels across counts as a small face (the bench's "small" figure).
SMALL_FACE_PX = 64
# The kinds of face a photo's own pixels reveal, with a stored figure each; in the order they are quoted.
CATEGORIES = {"grey": "black-and-white photos", "small": f"faces under {SMALL_FACE_PX} px"}
# The measures stored per fold and group: after the social pipeline, self-match and cross-photo.
MEASURES = ("self_social", "cross_social")


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials (``(nan, nan)`` when ``n`` is 0)."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    scale = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / scale
    half = z / scale * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Rate:
    """``k`` of ``n`` protected, with its Wilson 95% interval."""

    k: int
    n: int

    @classmethod
    def of_margins(cls, margins: Iterable[float]) -> Rate:
        """How many of a judge's ``margins`` are past its threshold (> 0: no match)."""
        margins = list(margins)
        return cls(sum(m > 0 for m in margins), len(margins))

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.k, self.n)

    def __str__(self) -> str:
        if not self.n:
            return "-"
        low, high = self.interval
        return f"{100 * self.value:.0f}% [{100 * low:.0f}-{100 * high:.0f}] n={self.n}"

    def as_dict(self) -> dict[str, float | int]:
        low, high = self.interval
        return {"k": self.k, "n": self.n, "rate": self.value, "low": low, "high": high}


def preset_hash(preset: Preset) -> str:
    """A short hash of every field of ``preset`` but its name: it changes when the attack does."""
    fields = preset.model_dump(mode="json", exclude={"name"})
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Figure:
    """One group of faces (every face, or one kind) across the holdout folds: a :class:`Rate` per fold.

    Cross-photo rates count pairs (a cloaked face and one clean photo of the
    same person from another source); a group whose people have no such photo
    has none.
    """

    label: str
    self_social: tuple[Rate, ...]
    cross_social: tuple[Rate, ...]

    @property
    def faces(self) -> int:
        return max((r.n for r in self.self_social), default=0)

    @staticmethod
    def mean(rates: Sequence[Rate]) -> float:
        measured = [r.value for r in rates if r.n]
        return statistics.mean(measured) if measured else math.nan

    @staticmethod
    def worst(rates: Sequence[Rate]) -> Rate | None:
        return min((r for r in rates if r.n), key=lambda r: r.value, default=None)

    @classmethod
    def _words(cls, rates: Sequence[Rate], unit: str, what: str = "") -> str:
        worst = cls.worst(rates)
        if worst is None:  # the bench stores a group only where it measured faces
            raise ValueError(f"no {unit} measured in any fold")
        n = max(r.n for r in rates)
        low, high = worst.interval
        return (
            f"{100 * cls.mean(rates):.0f}% of {n} {unit}{'s' * (n != 1)}{what} (worst fold {100 * worst.value:.0f}%, "
            f"95% interval {100 * low:.0f}-{100 * high:.0f}%)"
        )

    def short(self) -> str:
        return self._words(self.self_social, "face")

    def describe(self) -> str:
        text = self._words(self.self_social, "face", " against their own original")
        if self.worst(self.cross_social) is None:
            return text + " (no other photo of these people to match against)"
        return text + ", and " + self._words(self.cross_social, "pair", " of a cloaked face and another photo of the person")

    def as_dict(self) -> dict[str, object]:
        """JSON-ready: per measure, the mean over folds and the worst fold with its interval (None where unmeasured)."""
        out: dict[str, object] = {"faces": self.faces}
        for measure in MEASURES:
            rates = getattr(self, measure)
            worst = self.worst(rates)
            out[measure] = None if worst is None else round(self.mean(rates), 3)
            out[f"{measure}_worst_fold"] = None if worst is None else round(worst.value, 3)
            out[f"{measure}_worst_fold_interval"] = None if worst is None else [round(v, 3) for v in worst.interval]
        return out


@dataclass(frozen=True)
class TransferEstimate:
    preset: str
    heldout: tuple[str, ...]  # one fold per held-out recogniser
    overall: Figure
    categories: tuple[Figure, ...] = ()  # the photo's own kinds of face, where known and measured

    @property
    def folds(self) -> int:
        return len(self.heldout)

    @property
    def faces(self) -> int:
        return self.overall.faces

    def short(self) -> str:
        text = f"holdout estimate: unseen recognisers miss {self.overall.short()}"
        return text + "".join(f"; {c.label}: {c.short()}" for c in self.categories)

    def describe(self) -> str:
        text = (
            f"holdout estimate for preset {self.preset!r} (leave-one-out over {self.folds} recogniser"
            f"{'s' * (self.folds != 1)} on the varied test set, after resize + JPEG): an unseen recogniser fails "
            f"to match {self.overall.describe()}"
        )
        return text + "".join(f"; on {c.label}: {c.describe()}" for c in self.categories)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready figures, every face and the photo's own kinds of face."""
        return {
            "preset": self.preset,
            "folds": self.folds,
            **self.overall.as_dict(),
            "categories": {c.label: c.as_dict() for c in self.categories},
        }


def photo_categories(rgb: np.ndarray | None = None, face_sizes: Iterable[float] = ()) -> list[str]:
    """The kinds of face (keys of :data:`CATEGORIES`) a photo's pixels and its faces' sizes reveal."""
    found = []
    if rgb is not None and is_grey(rgb):
        found.append("grey")
    if any(size < SMALL_FACE_PX for size in face_sizes):
        found.append("small")
    return found


@cache
def _stored() -> dict[str, dict]:
    path = files("lowkeyd.engine") / "transfer.json"
    return json.loads(path.read_text())["presets"] if path.is_file() else {}


def transfer_estimate(
    preset: str | Preset,
    *,
    rgb: np.ndarray | None = None,
    face_sizes: Iterable[float] = (),
    stored: Mapping[str, dict] | None = None,
) -> TransferEstimate | None:
    """The holdout bench's figures for ``preset`` (a shipped preset's name, or a :class:`Preset`).

    None for a preset the bench has not measured, or whose fields changed since
    (``stored`` defaults to ``transfer.json``). ``rgb`` (the original photo)
    and ``face_sizes`` select the figures for the photo's own kinds of face.
    """
    from lowkeyd.engine.presets import get_preset
    from lowkeyd.errors import EngineError

    if isinstance(preset, str):
        try:
            preset = get_preset(preset)
        except EngineError:  # a name with overrides, or a preset this version does not ship
            return None
    entry = (_stored() if stored is None else stored).get(preset.name)
    if not entry or entry["preset_hash"] != preset_hash(preset):
        return None
    folds = entry["folds"]

    def figure(group: str, label: str) -> Figure:
        rates = {m: tuple(Rate(*fold["groups"][group][m]) for fold in folds) for m in MEASURES}
        return Figure(label, rates["self_social"], rates["cross_social"])

    wanted = [c for c in photo_categories(rgb, face_sizes) if all(c in fold["groups"] for fold in folds)]
    return TransferEstimate(
        preset.name,
        tuple(fold["heldout"] for fold in folds),
        figure("all", "every face"),
        tuple(figure(c, CATEGORIES[c]) for c in wanted),
    )


def figures_from_bench(report: Mapping[str, Any]) -> tuple[dict[str, dict], list[str]]:
    """``transfer.json``'s ``presets`` from a ``lowkeyd bench --holdout --json`` report, and what was left out, why.

    Only shipped presets run unchanged on the whole varied set are kept: a
    preset with overrides, one whose fields changed since the run, or a run on
    a subset of photos would be quoted as something it is not.
    """
    from lowkeyd.engine.presets import PRESETS

    kept: dict[str, dict] = {}
    skipped: list[str] = []
    if report.get("set") != "varied" or report.get("subset"):
        return kept, [f"the run was on {report.get('set')!r}{' (a subset)' if report.get('subset') else ''}, not the whole varied set"]
    for name, run in report["presets"].items():
        if name not in PRESETS:
            skipped.append(f"{name}: not a shipped preset")
            continue
        if run["preset_hash"] != preset_hash(PRESETS[name]):
            skipped.append(f"{name}: its fields changed since the run (hash {run['preset_hash']}, now {preset_hash(PRESETS[name])})")
            continue
        folds = []
        for fold in run["folds"]:
            faces = fold["face_records"]
            groups = {"all": faces, "grey": [f for f in faces if f["grey"]], "small": [f for f in faces if f["size"] < SMALL_FACE_PX]}
            folds.append({
                "heldout": fold["heldout"],
                "groups": {
                    group: {
                        "self_social": _count(f["self_social"] for f in members),
                        "cross_social": _count(m for f in members for m in f["cross_social"]),
                    }
                    for group, members in groups.items()
                    if members
                },
            })
        kept[name] = {"preset_hash": run["preset_hash"], "set": "varied", "folds": folds}
    return kept, skipped


def _count(margins: Iterable[float]) -> list[int]:
    rate = Rate.of_margins(margins)
    return [rate.k, rate.n]
