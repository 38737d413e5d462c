"""The holdout bench's test set and figures: who each face is, which photos count as another photo of them,
the interval on every rate, grey from the pixels, estimates that go stale with their preset, the crop sheet."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from lowkeyd.engine.evaluate import EmbedderJudge
from lowkeyd.engine.holdout import FaceRecord, Fold, PhotoRecord
from lowkeyd.engine.measures import added_colour, changed_percentile, is_grey
from lowkeyd.engine.presets import get_preset
from lowkeyd.engine.testset import FaceId, cross_gallery
from lowkeyd.engine.transfer import Rate, figures_from_bench, preset_hash, transfer_estimate, wilson
from lowkeyd.errors import LowkeydError
from lowkeyd.testphotos import load_set

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def varied():
    return {s.name: s for s in load_set("varied")}


def test_the_faces_of_the_group_photo_are_named_left_to_right_and_are_those_people(varied, detector):
    import torch

    from lowkeyd.engine.models.zoo import load_embedder

    group = varied["group.jpg"]
    pairs = group.assign(detector.detect(group.rgb))
    assert [fid.person for _, fid in pairs] == ["obama", "biden", "astronaut"]
    centres = [(face.box[0] + face.box[2]) / 2 for face, _ in pairs]
    assert centres == sorted(centres)
    # An independent check that left-to-right is who they are: each face is closest to its source photo's face.
    judge = EmbedderJudge(load_embedder("sface"), torch.device("cpu"))
    faces = judge.identities(group.rgb, [face for face, _ in pairs])
    for (_, fid), vector in zip(pairs, faces, strict=True):
        closest = max(
            ("obama2.jpg", "biden.jpg", "astronaut.png"),
            key=lambda name: judge.score(vector, judge.identities(varied[name].rgb, detector.detect(varied[name].rgb)[:1])[0]),
        )
        assert closest == fid.source, (fid.name, closest)
    with pytest.raises(LowkeydError, match="finds 2 face"):
        group.assign([face for face, _ in pairs][:2])


def test_the_cross_gallery_never_holds_a_variant_of_the_probes_own_source_photo(varied):
    everyone = [fid for subject in varied.values() for fid in subject.face_ids()]
    assert len(everyone) == 21
    obama = varied["obama.jpg"].face_ids()[0]
    gallery = {f.name for f in cross_gallery(obama, everyone)}
    assert {"obama2.jpg:obama", "obama3.jpg:obama", "obama2-q50.jpg:obama", "group.jpg:obama", "obama3-dim.jpg:obama"} <= gallery
    assert not gallery & {"obama.jpg:obama", "obama-grey-l.jpg:obama", "small-faces.jpg:obama", "group.jpg:biden"}
    # The group's obama is made from obama2.jpg: obama.jpg is another photo of him, obama2's variants are not.
    group_obama = next(f for f in varied["group.jpg"].face_ids() if f.person == "obama")
    group_gallery = {f.name for f in cross_gallery(group_obama, everyone)}
    assert "obama.jpg:obama" in group_gallery and not group_gallery & {"obama2.jpg:obama", "obama2-grey-rgb.png:obama"}
    # Every photo of biden is made from biden.jpg: he has no other photo to be matched against.
    assert cross_gallery(next(f for f in varied["group.jpg"].face_ids() if f.person == "biden"), everyone) == []


def test_a_subset_is_picked_by_photo_and_category_and_a_wrong_name_is_one_clear_error():
    assert [s.name for s in load_set("varied", categories=["grey_rgb", "small"])] == [
        "obama2-grey-rgb.png", "astronaut-grey-rgb.png", "small-faces.jpg",
    ]
    assert [s.name for s in load_set("samples", photos=["biden.jpg"])] == ["biden.jpg"]
    with pytest.raises(LowkeydError, match="no category 'grey'"):
        load_set("varied", categories=["grey"])
    with pytest.raises(LowkeydError, match="no photo 'group.jpg' in the samples set"):
        load_set("samples", photos=["group.jpg"])


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    # Newcombe (1998), Statistics in Medicine 17:857, table I, method 3 (score interval without continuity correction).
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)],
)
def test_the_wilson_interval_matches_published_values(k, n, low, high):
    assert wilson(k, n) == pytest.approx((low, high), abs=5e-5)
    rate = Rate(k, n)
    assert str(rate) == f"{100 * k / n:.0f}% [{100 * low:.0f}-{100 * high:.0f}] n={n}"


def test_black_and_white_is_decided_from_the_pixels_not_the_file_mode(varied):
    grey = {name for name, s in varied.items() if is_grey(s.rgb)}
    assert grey == {"obama-grey-l.jpg", "biden-grey-l.jpg", "obama2-grey-rgb.png", "astronaut-grey-rgb.png"}
    assert varied["obama2-grey-rgb.png"].grayscale is False  # stored as RGB: the file mode alone misses it
    assert varied["obama-grey-l.jpg"].grayscale is True
    tinted = varied["astronaut-grey-rgb.png"].rgb.copy()
    tinted[100, 100, 0] = min(255, int(tinted[100, 100, 1]) + 3)
    assert not is_grey(tinted) and added_colour(tinted) == 3
    tinted[100, 100, 0] = min(255, int(tinted[100, 100, 1]) + 2)
    assert is_grey(tinted)


def test_the_changed_pixel_percentile_counts_only_changed_pixels_and_sees_a_few_outliers():
    original = np.full((200, 200, 3), 100, np.uint8)
    cloaked = original.copy()
    cloaked[:50, :, 1] += 3  # 10 000 pixels moved by 3 levels in one channel
    cloaked[199, :5] = 200  # 5 outliers: under 0.1% of the changed pixels
    assert changed_percentile(original, cloaked) == pytest.approx(3.0, abs=0.5)
    cloaked[199, :40] = 200  # 40: over 0.1%
    assert changed_percentile(original, cloaked) == 100
    assert changed_percentile(original, original) == 0


def _fold(heldout: str, margins: dict[str, tuple[float, list[float], float]]) -> Fold:
    """A fold of three faces with the given (self_social margin, cross_social margins, size): no attack run."""
    fold = Fold(heldout, ("a", "b"))
    for name, (self_social, cross, size) in margins.items():
        fid = FaceId(f"{name}.jpg", 0, name, f"{name}.jpg", "original")
        fold.faces.append(FaceRecord(
            fid, size, name == "grey", self_social, self_social, cross, cross, ["x"] * len(cross), 0.01, 0.01, 5.0, None, 10
        ))
        fold.photos.append(PhotoRecord(fid.photo, "original", name == "grey", 40.0, 5.0, None, 1.0, 1))
    return fold


def test_a_stored_estimate_carries_n_and_interval_and_goes_stale_when_the_preset_changes():
    default = get_preset("default")
    folds = [
        _fold("sface", {"big": (0.2, [0.1, -0.1], 300.0), "grey": (0.1, [0.3], 200.0), "tiny": (-0.1, [], 40.0)}),
        _fold("dlib", {"big": (0.3, [0.2, 0.2], 300.0), "grey": (-0.2, [0.1], 200.0), "tiny": (0.1, [], 40.0)}),
    ]
    report = {"set": "varied", "subset": False, "presets": {"default": {"preset_hash": preset_hash(default), "folds": [f.summary() for f in folds]}}}
    stored, skipped = figures_from_bench(report)
    assert skipped == [] and set(stored) == {"default"}

    estimate = transfer_estimate("default", stored=stored)
    assert estimate is not None and estimate.heldout == ("sface", "dlib") and estimate.faces == 3
    assert [r.k for r in estimate.overall.self_social] == [2, 2] and [r.n for r in estimate.overall.cross_social] == [3, 3]
    assert estimate.categories == ()
    worst = estimate.overall.worst(estimate.overall.cross_social)
    assert (worst.k, worst.n) == (2, 3)
    low, high = wilson(2, 3)
    assert f"{100 * low:.0f}-{100 * high:.0f}%" in estimate.short() and "miss 67% of 3 faces" in estimate.short()

    small = transfer_estimate(default, face_sizes=[40.0, 300.0], stored=stored)
    assert [c.label for c in small.categories] == ["faces under 64 px"] and small.categories[0].faces == 1
    grey = transfer_estimate(default, rgb=np.full((8, 8, 3), 90, np.uint8), stored=stored)
    assert [c.label for c in grey.categories] == ["black-and-white photos"]
    assert "black-and-white photos: 50% of 1 face (worst fold 0%" in grey.short() and grey.as_dict()["categories"]["black-and-white photos"]["faces"] == 1

    changed = default.model_copy(update={"steps": default.steps - 1})  # same name, another attack
    assert transfer_estimate(changed, stored=stored) is None
    assert transfer_estimate("default(steps=79)", stored=stored) is None
    stale = {**report, "presets": {"default": {**report["presets"]["default"], "preset_hash": preset_hash(changed)}}}
    assert figures_from_bench(stale)[0] == {} and "fields changed" in figures_from_bench(stale)[1][0]
    assert figures_from_bench({**report, "subset": True})[0] == {}


def test_the_shipped_figures_are_of_the_presets_as_they_are_now():
    import json

    from lowkeyd.engine.presets import PRESETS

    stored = json.loads((ROOT / "lowkeyd" / "engine" / "transfer.json").read_text())["presets"]
    for name, entry in stored.items():
        assert entry["preset_hash"] == preset_hash(PRESETS[name]), f"{name}: rerun the bench and scripts/transfer_figures.py"
        assert transfer_estimate(name) is not None


def test_the_crop_sheet_lays_out_every_face_at_1_to_1_and_enlarges_small_ones(varied, detector, monkeypatch):
    from lowkeyd.engine.cloak import Cloaker
    from lowkeyd.engine.measures import grown_box

    spec = importlib.util.spec_from_file_location("crop_sheet", ROOT / "scripts" / "crop_sheet.py")
    crop_sheet = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "crop_sheet", crop_sheet)  # its dataclasses look their module up
    spec.loader.exec_module(crop_sheet)

    cloaker = Cloaker(get_preset("default", steps=2, target=None), "cpu", models=["sface"])
    subject = varied["small-faces.jpg"]
    cloaked = cloaker.cloak(subject.rgb).rgb
    pairs = subject.assign(detector.detect(subject.rgb))
    image, panels = crop_sheet.sheet(subject, pairs, {"cheap": cloaked})
    sheet = np.asarray(image)
    assert len(panels) == 3 * 2 * 3  # three faces under 64 px: a 1:1 row and an enlarged row each
    for face, fid in pairs:
        xa, ya, xb, yb = grown_box(face.box, subject.rgb.shape, 0.25)
        expected = {
            "original": subject.rgb[ya:yb, xa:xb],
            "cloaked": cloaked[ya:yb, xa:xb],
            "difference": np.clip(128 + 8 * (cloaked[ya:yb, xa:xb].astype(int) - subject.rgb[ya:yb, xa:xb]), 0, 255),
        }
        assert not np.array_equal(expected["original"], expected["cloaked"])  # the attack changed the face
        for panel in (p for p in panels if p.face == fid.name):
            shown = sheet[panel.y : panel.y + panel.height, panel.x : panel.x + panel.width]
            want = expected[panel.kind].repeat(panel.scale, 0).repeat(panel.scale, 1)
            np.testing.assert_array_equal(shown, want, err_msg=f"{fid.name} {panel.kind} x{panel.scale}")
        assert {p.scale for p in panels if p.face == fid.name} == {1, 4}
    boxes = [(p.x, p.y, p.x + p.width, p.y + p.height) for p in panels]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], "panels overlap"
    assert image.width >= max(b[2] for b in boxes) and image.height >= max(b[3] for b in boxes)

    large = varied["biden-crop112.png"]
    _, panels = crop_sheet.sheet(large, large.assign(detector.detect(large.rgb)), {"cheap": cloaker.cloak(large.rgb).rgb})
    assert [(p.kind, p.scale) for p in panels] == [("original", 1), ("cloaked", 1), ("difference", 1)]  # 85 px: 1:1 only
