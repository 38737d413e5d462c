"""Test photos the bench cloaks: who is in each face, from which source photo, what kind of photo.

The photos themselves are read by :mod:`lowkeyd.testphotos` (the engine reads no files).
Identities are per face: in a photo of several people the faces, taken left
to right by box centre, are the manifest's people in order. A face's
*source* is the sample photo it was made from, so a variant of obama.jpg is
never used as another photo of obama (that would be self-match).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lowkeyd.engine.faces import Face
from lowkeyd.errors import LowkeydError

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
