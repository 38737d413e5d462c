"""The bundled test photos the bench cloaks: who is in each, from which source photo, what kind.

Two sets ship as package data:

* ``varied`` (default): ``samples/varied/manifest.json``, made from the five
  sample photos by ``scripts/varied_set.py``: the originals, black-and-white
  (mode L and RGB), 112 px crops, 40-60 px faces, dim, q50 JPEG, a group.
* ``samples``: the five sample photos alone (three people, large colour faces).

Identities are per face: in a photo of several people the faces, taken left
to right by box centre, are the manifest's people in order. A face's
*source* is the sample photo it was made from, so a variant of obama.jpg is
never used as another photo of obama (that would be self-match).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np

from lowkeyd.engine.faces import Face
from lowkeyd.errors import LowkeydError

SETS = ("varied", "samples")
# The five sample photos and who is in them (public-domain; see samples/SOURCES.md).
SAMPLES = {"obama.jpg": "obama", "obama2.jpg": "obama", "obama3.jpg": "obama", "biden.jpg": "biden", "astronaut.png": "astronaut"}


@dataclass(frozen=True)
class FaceId:
    """Who one face of a test photo is, and where it came from."""

    photo: str
    index: int  # left to right
    person: str
    source: str  # the sample photo this face was made from
    category: str

    @property
    def name(self) -> str:
        return f"{self.photo}:{self.person}"


@dataclass(frozen=True)
class Subject:
    """A test photo: its pixels, its kind, and the people in it left to right with each one's source photo."""

    name: str
    rgb: np.ndarray
    category: str
    people: tuple[str, ...]
    sources: tuple[str, ...]  # one per person
    grayscale: bool = False  # stored as grayscale: the pipeline cloaks it in luma alone

    def face_ids(self) -> list[FaceId]:
        return [FaceId(self.name, i, p, s, self.category) for i, (p, s) in enumerate(zip(self.people, self.sources, strict=True))]

    def assign(self, faces: Sequence[Face]) -> list[tuple[Face, FaceId]]:
        """``faces`` (as detected) left to right by box centre, each with who it is.

        The detector must find exactly the manifest's people: a face missed or
        one too many would give a face someone else's name.
        """
        if len(faces) != len(self.people):
            raise LowkeydError(
                f"{self.name}: the detector finds {len(faces)} face(s) but the manifest lists {len(self.people)} "
                f"({', '.join(self.people)})"
            )
        ordered = sorted(faces, key=lambda f: (f.box[0] + f.box[2]) / 2)
        return list(zip(ordered, self.face_ids(), strict=True))


def cross_gallery(probe: FaceId, faces: Sequence[FaceId]) -> list[FaceId]:
    """The faces of ``probe``'s person made from another source photo: its cross-photo gallery."""
    return [f for f in faces if f.person == probe.person and f.source != probe.source]


def load_set(name: str = "varied", photos: Sequence[str] = (), categories: Sequence[str] = ()) -> list[Subject]:
    """The photos of test set ``name``, or those named in ``photos`` / of ``categories`` (each filter optional).

    A photo is named by its file name (``group.jpg``, ``obama.jpg``).
    """
    from lowkeyd.photo.decode import read_photo

    if name not in SETS:
        raise LowkeydError(f"unknown photo set {name!r} (choose from {', '.join(SETS)})")
    root = Path(str(files("lowkeyd") / "samples"))
    if name == "varied":
        folder = root / "varied"
        entries = [
            (folder / e["file"], e["category"], tuple(e["people"]), tuple(s.strip() for s in e["source"].split(",")))
            for e in json.loads((folder / "manifest.json").read_text())["photos"]
        ]
    else:
        entries = [(root / n, "original", (p,), (n,)) for n, p in SAMPLES.items()]
    known = {path.name for path, *_ in entries}
    known_categories = {category for _, category, *_ in entries}
    for wanted, pool, what in ((photos, known, "photo"), (categories, known_categories, "category")):
        unknown = sorted(set(wanted) - pool)
        if unknown:
            raise LowkeydError(f"no {what} {unknown[0]!r} in the {name} set (choose from {', '.join(sorted(pool))})")
    subjects = []
    for path, category, people, sources in entries:
        if (photos and path.name not in photos) or (categories and category not in categories):
            continue
        if len(sources) == 1:  # everyone in the photo came from one source photo
            sources *= len(people)
        if len(sources) != len(people):
            raise LowkeydError(f"{path.name}: the manifest lists {len(people)} people but {len(sources)} sources")
        photo = read_photo(path)
        subjects.append(Subject(path.name, photo.rgb, category, people, sources, photo.grayscale))
    if not subjects:
        raise LowkeydError(f"no photo of the {name} set is both among the photos and the categories asked for")
    return subjects
