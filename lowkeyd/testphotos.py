"""The bundled test photos the bench cloaks, read from the package's ``samples/`` folder.

Two sets ship as package data:

* ``varied`` (default): ``samples/varied/manifest.json``, made from the five
  sample photos by ``scripts/varied_set.py``: the originals, black-and-white
  (mode L and RGB), 112 px crops, 40-60 px faces, dim, q50 JPEG, a group.
* ``samples``: the five sample photos alone (three people, large colour faces).

Each photo is read as the pipeline reads it (so a mode-L file is cloaked in
luma alone, as the daemon would).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path

from lowkeyd.engine.testset import Subject
from lowkeyd.errors import LowkeydError
from lowkeyd.photo.decode import read_photo

SETS = ("varied", "samples")
# The five sample photos and who is in them (public-domain; see samples/SOURCES.md).
SAMPLES = {"obama.jpg": "obama", "obama2.jpg": "obama", "obama3.jpg": "obama", "biden.jpg": "biden", "astronaut.png": "astronaut"}


def load_set(name: str = "varied", photos: Sequence[str] = (), categories: Sequence[str] = ()) -> list[Subject]:
    """The photos of test set ``name``, or those named in ``photos`` / of ``categories`` (each filter optional).

    A photo is named by its file name (``group.jpg``, ``obama.jpg``).
    """
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
