"""The transfer techniques each do what they say, on real models and real faces; the holdout bench end to end."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import aligned_face, detected_face, load_rgb
from lowkeyd.engine.align import warp_faces
from lowkeyd.engine.attack import LowKey, eye_spots, feature_guard, remove_shading
from lowkeyd.engine.presets import get_preset
from lowkeyd.engine.surrogate import Surrogates


@pytest.fixture(scope="module")
def sface():
    from lowkeyd.engine.models.zoo import load_embedder

    return load_embedder("sface")


@pytest.fixture(scope="module")
def face(sface) -> torch.Tensor:
    return aligned_face("obama.jpg", sface.template, sface.input_size)


def test_dropout_thins_the_member_differently_each_step_and_only_while_attacking(sface, face):
    plain = sface(face)
    surrogates = Surrogates([sface], dropout=0.03, tap_depth=None)
    with surrogates.attached(torch.Generator().manual_seed(0)):
        assert torch.equal(sface(face), plain)  # hooks attached but off: the reference view is the real model
        surrogates.drop = True
        first, second = sface(face), sface(face)
    assert not torch.allclose(first, second)  # a new mask every forward
    # Thinned, not broken: still the same person for the thinned model.
    assert float((first * plain).sum()) > sface.threshold
    assert torch.equal(sface(face), plain)  # detached: the resident model is untouched


def test_the_tap_records_a_pooled_intermediate_feature_that_moves_with_the_face(sface, face):
    surrogates = Surrogates([sface], dropout=0.0, tap_depth=0.5)
    with surrogates.attached(torch.Generator().manual_seed(0)):
        sface(face)
        clean = surrogates.taps["sface"]
        sface(aligned_face("biden.jpg", sface.template, sface.input_size))
        other = surrogates.taps["sface"]
    assert clean.ndim == 2 and clean.shape[0] == 1 and clean.shape[1] > 8
    assert float(torch.nn.functional.cosine_similarity(clean, other)) < 0.999
    assert surrogates.taps == {}  # nothing kept after the attack


def test_the_tap_term_has_a_finite_gradient_that_starts_at_zero_distance(sface):
    from lowkeyd.engine.cloak import Cloaker

    cloaker = Cloaker("default", "cpu", models=["sface"], steps=1, tap_weight=1.0, target=None)
    rgb = load_rgb("astronaut.png")
    crop = cloaker._cut(0, rgb, cloaker.detector.detect(rgb)[0])
    attack = cloaker.attack
    with attack.surrogates.attached(torch.Generator().manual_seed(0)):
        batch = attack._prepare(crop.pixels[None], crop.landmarks[None], crop.mask[None], crop.region[None])
        idx = torch.tensor([0])
        x = crop.pixels[None].clone().requires_grad_()
        attack._embeddings(x, batch.landmarks, None)
        distance = attack._tap_distance(attack.surrogates.taps["sface"], batch.taps["sface"], idx)
        assert float(distance.detach()) < 1e-6
        noisy = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
        attack._embeddings(noisy, batch.landmarks, None)
        moved = attack._tap_distance(attack.surrogates.taps["sface"], batch.taps["sface"], idx)
        (grad,) = torch.autograd.grad(moved.sum(), x)
    assert float(moved.detach()) > 1e-4
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_affine_jitter_rotates_and_scales_the_aligned_face(sface):
    rgb = torch.from_numpy(load_rgb("obama.jpg").copy()).permute(2, 0, 1)[None].float() / 255
    landmarks = torch.from_numpy(detected_face("obama.jpg").landmarks)[None].float()
    size = sface.input_size
    identity = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    straight = warp_faces(rgb, landmarks, sface.template, size)
    assert torch.allclose(warp_faces(rgb, landmarks, sface.template, size, identity), straight, atol=1e-5)
    preset = get_preset("default", jitter_px=0, jitter_deg=5, jitter_scale=0.05)
    jitter = LowKey([sface], torch.nn.Identity(), preset)._jitter(64, torch.Generator().manual_seed(0), torch.device("cpu"))
    linear = jitter[:, :, :2]
    scale = linear.det().sqrt()
    angle = torch.atan2(linear[:, 1, 0], linear[:, 0, 0])
    assert torch.allclose(jitter[:, :, 2], torch.zeros(64, 2))  # no shift asked for
    assert 0.02 < float(scale.std()) < 0.08 and 0.05 < float(angle.std()) < 0.15  # ~5% and ~5 degrees
    moved = warp_faces(rgb, landmarks, sface.template, size, jitter[:1])
    assert (moved - straight).abs().mean() > 0.01


def test_translation_invariant_steps_are_smoother(sface):
    from lowkeyd.engine.cloak import Cloaker

    rgb = load_rgb("astronaut.png")

    def step(ti: int) -> torch.Tensor:
        cloaker = Cloaker("default", "cpu", models=["sface"], steps=1, target=None, ti_kernel=ti, init_noise=0.0,
                          flat_weight=1.0, chroma_scale=1.0, blur_kernel=0)
        crop = cloaker._cut(0, rgb, cloaker.detector.detect(rgb)[0])
        result = cloaker.attack(crop.pixels[None], crop.landmarks[None], crop.mask[None], crop.region[None])
        return (result.adversarial - crop.pixels[None])[0]

    def roughness(delta: torch.Tensor) -> float:
        # Energy of neighbour differences relative to the change itself: high for pixel noise.
        dx, dy = delta.diff(dim=-1), delta.diff(dim=-2)
        return float((dx.pow(2).mean() + dy.pow(2).mean()) / delta.pow(2).mean())

    plain, smoothed = step(0), step(7)
    assert smoothed.abs().sum() > 0
    assert roughness(smoothed) < 0.5 * roughness(plain), (roughness(plain), roughness(smoothed))


@pytest.mark.parametrize("ycbcr", [True, False])
def test_shading_removal_takes_the_broad_luma_change_and_leaves_texture_and_colour(ycbcr):
    g = torch.Generator().manual_seed(0)
    texture = torch.randn(1, 3, 96, 96, generator=g) * 0.1
    ramp = torch.linspace(-1, 1, 96).view(1, 1, 1, 96).expand(1, 3, 96, 96)  # darker on one side: shading
    step = texture + ramp
    eyes = torch.tensor([32.0])  # a 4 px sigma

    def luma(t: torch.Tensor) -> torch.Tensor:
        return t[:, :1] if ycbcr else 0.299 * t[:, 0:1] + 0.587 * t[:, 1:2] + 0.114 * t[:, 2:3]

    def broad(t: torch.Tensor) -> float:  # luma averaged over 16 px squares: what reads as shading
        return float(torch.nn.functional.avg_pool2d(luma(t), 16).abs().mean())

    kept = remove_shading(step, eyes, keep=0.0, ycbcr=ycbcr)
    assert broad(kept) < 0.05 * broad(step)
    # What is left is the texture (away from the borders, where a reflected ramp is no ramp).
    inner = (..., slice(16, -16), slice(16, -16))
    error = (luma(kept) - luma(texture))[inner].pow(2).mean()
    assert float(error) < 0.1 * float(luma(texture)[inner].pow(2).mean())
    if ycbcr:
        assert torch.equal(kept[:, 1:], step[:, 1:])  # chroma untouched
    else:
        # Only an equal change to R, G and B: colour differences untouched.
        assert torch.allclose(kept[:, 0] - kept[:, 1], step[:, 0] - step[:, 1], atol=1e-6)
    half = remove_shading(step, eyes, keep=0.5, ycbcr=ycbcr)
    assert broad(kept) < broad(half) < broad(step)
    assert torch.equal(remove_shading(step, eyes, keep=1.0, ycbcr=ycbcr), step)


def test_the_change_cap_holds_every_pixel_and_spreads_the_change():
    from lowkeyd.engine.cloak import Cloaker

    rgb = load_rgb("astronaut.png")

    def change(cap: float | None) -> torch.Tensor:
        cloaker = Cloaker("default", "cpu", models=["sface"], steps=8, step_size=0.006, target=None, max_change=cap)
        crop = cloaker._cut(0, rgb, cloaker.detector.detect(rgb)[0])
        result = cloaker.attack(crop.pixels[None], crop.landmarks[None], crop.mask[None], crop.region[None])
        return (result.adversarial - crop.pixels[None]).abs()

    free, capped = change(None), change(0.02)
    assert float(free.max()) > 0.04  # uncapped, the change piles up somewhere
    assert float(capped.max()) <= 0.02 + 1e-6
    # Not simply clipped: the capped run moves more pixels by a visible amount.
    assert float((capped > 0.01).float().mean()) > float((free > 0.01).float().mean())


def test_the_decoy_is_someone_else_and_the_push_moves_towards_them(sface):
    from lowkeyd.engine.cloak import Cloaker

    rgb = load_rgb("obama.jpg")  # obama.jpg is also a decoy: it must never be picked for itself

    def run(decoy_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cloaker = Cloaker("default", "cpu", models=["sface"], steps=6, target=None, decoy_weight=decoy_weight)
        crop = cloaker._cut(0, rgb, cloaker.detector.detect(rgb)[0])
        result = cloaker.attack(crop.pixels[None], crop.landmarks[None], crop.mask[None], crop.region[None])
        decoys = cloaker.attack._decoy_embeddings
        adversarial = cloaker.attack._embeddings(result.adversarial, crop.landmarks[None], None)["sface"][0, 0]
        original = cloaker.attack._embeddings(crop.pixels[None], crop.landmarks[None], None)["sface"][0, 0]
        return adversarial, original, decoys

    towards, original, decoys = run(1.0)
    away, _, _ = run(0.0)
    assert decoys is not None and decoys["sface"].shape[0] == 3
    likeness = decoys["sface"] @ original
    assert float(likeness.max()) > sface.threshold  # obama.jpg itself is among the decoys...
    decoy = decoys["sface"][likeness.argmin()]
    assert float(decoy @ original) < sface.threshold  # ...and the one picked is another person
    assert float(towards @ decoy) > float(away @ decoy) + 0.02


@pytest.mark.parametrize("quality", [70, 80, 95])
def test_the_differentiable_jpeg_decodes_like_pillow_and_passes_gradients(quality):
    import io

    from PIL import Image

    from lowkeyd.engine.jpeg_approx import jpeg_round_trip

    # An odd-sized crop of a real photo: partial blocks and MCUs at the edges.
    image = Image.fromarray(load_rgb("obama.jpg")).crop((100, 40, 401, 297))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)  # Pillow's default: 4:2:0
    pillow = np.asarray(Image.open(buffer).convert("RGB")).astype(np.int16)
    x = (torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None].float() / 255).requires_grad_()
    ours = jpeg_round_trip(x, quality)
    (grad,) = torch.autograd.grad(ours.pow(2).sum(), x)
    levels = (ours[0].detach().permute(1, 2, 0).numpy() * 255).round().astype(np.int16)
    error = np.abs(levels - pillow)
    # libjpeg computes in integers (DCT, colour conversion, chroma filters), so some samples and
    # a few coefficients round the other way: within 2 levels almost everywhere (measured 97-99 %,
    # mean error 0.4 levels), and closer to Pillow's decode than JPEG's own change is to the source.
    assert float(np.mean(error <= 2)) > 0.96, np.percentile(error, [50, 96, 100])
    assert error.mean() < 0.6 * np.abs(pillow - np.asarray(image)).mean()
    assert torch.isfinite(grad).all() and grad.abs().mean() > 0.5  # straight through, not zero


def test_the_attack_sees_the_jpeg_view_when_asked(sface):
    attack = LowKey([sface], torch.nn.Identity(), get_preset("default", jpeg_views=1.0, rescale_min=1.0, blur_kernel=0))
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    views, _, _ = attack._views(x, torch.Generator().manual_seed(0))
    assert (views - x).abs().mean() > 0.01  # noise does not survive JPEG
    assert torch.equal(views, (views * 255).round() / 255)  # decoded to 8-bit samples
    plain = LowKey([sface], torch.nn.Identity(), get_preset("default", rescale_min=1.0, blur_kernel=0))
    assert torch.equal(plain._views(x, torch.Generator().manual_seed(0))[0], x)


@pytest.mark.parametrize(("smoothing", "stops"), [(1.0, False), (0.5, True)])
def test_the_stop_averages_the_published_views_looks(sface, smoothing, stops):
    from lowkeyd.engine.attack import _Batch, _State

    attack = LowKey([sface], torch.nn.Identity(), get_preset("default", stop_smoothing=smoothing))
    target = attack._targets["sface"]
    reference = torch.nn.functional.normalize(torch.randn(1, 1, 128, generator=torch.Generator().manual_seed(0)), dim=-1)
    side = torch.nn.functional.normalize(torch.randn(128, generator=torch.Generator().manual_seed(1)), dim=0)
    side = torch.nn.functional.normalize(side - (side @ reference[0, 0]) * reference[0, 0], dim=0)

    def look(cos: float) -> dict[str, torch.Tensor]:  # an embedding at cosine ``cos`` to the original
        return {"sface": (cos * reference + math.sqrt(1 - cos**2) * side).requires_grad_()}

    batch = _Batch(*(None,) * 5, reference={"sface": reference}, taps={}, decoys={})
    idx = torch.tensor([0])
    state = attack._start(_Batch(torch.zeros(1, 3, 8, 8), *(None,) * 7), torch.Generator().manual_seed(0))
    assert isinstance(state, _State)
    # Well past the target on one look, a little short of it on the next (a bad misalignment):
    # on average past it.
    for cos in (target - 0.3, target + 0.05):
        attack._pull(batch, state, idx, look(cos), plain_seen=True)
    remaining, _ = attack._retire_done(state, idx, torch.zeros(1, 3, 8, 8))
    assert (remaining.numel() == 0) == stops
    attack._pull(batch, state, idx, look(target - 0.3), plain_seen=False)  # a blurred view never counts
    assert math.isclose(float(state.expected["sface"][0]), target + (0.05 if smoothing == 1 else -0.125), abs_tol=1e-5)


def test_the_feature_guard_spares_eyes_brows_and_bridge_not_cheeks():
    landmarks = torch.tensor([[[40.0, 50.0], [80.0, 50.0], [60.0, 75.0], [45.0, 95.0], [75.0, 95.0]]])
    guard = feature_guard(landmarks, (128, 128), weight=0.2)[0, 0]
    for x, y in ((40, 50), (80, 50), (40, 40), (60, 50)):  # eyes, a brow, the bridge
        assert guard[y, x] < 0.25, (x, y, float(guard[y, x]))
    for x, y in ((30, 90), (90, 90), (60, 120), (5, 5)):  # cheeks, chin, background
        assert guard[y, x] > 0.99, (x, y, float(guard[y, x]))


def test_the_eye_chroma_guard_keeps_the_iris_colour_and_not_its_brightness(sface):
    from lowkeyd.engine.cloak import Cloaker

    landmarks = torch.tensor([[[40.0, 50.0], [80.0, 50.0], [60.0, 75.0], [45.0, 95.0], [75.0, 95.0]]])
    spots = eye_spots(landmarks, (128, 128), weight=0.0)[0, 0]
    assert spots[50, 40] == 0 and spots[50, 80] == 0
    assert spots[50, 60] == 1 and spots[90, 30] == 1  # bridge, cheek

    rgb = load_rgb("obama.jpg")
    cloaker = Cloaker("default", "cpu", models=["sface"], steps=4, step_size=0.004, target=None, eye_chroma=0.0)
    crop = cloaker._cut(0, rgb, cloaker.detector.detect(rgb)[0])
    result = cloaker.attack(crop.pixels[None], crop.landmarks[None], crop.mask[None], crop.region[None])
    delta = (result.adversarial - crop.pixels[None])[0]
    luma = 0.299 * delta[0] + 0.587 * delta[1] + 0.114 * delta[2]
    colour = (delta - luma).abs().amax(0)  # how far the change is from grey
    for x, y in crop.landmarks[:2].round().long().tolist():
        assert float(colour[y, x]) < 2e-3, float(colour[y, x])
        assert float(luma[y - 2 : y + 3, x - 2 : x + 3].abs().max()) > 2e-3  # brightness still changes there
    assert float(colour.max()) > 5e-3  # colour elsewhere still does


def test_targets_sit_between_threshold_and_a_stranger_on_each_models_own_scale(sface):
    class Dlibish(torch.nn.Module):
        name, threshold, stranger = "dlibish", 0.9, 0.8
        template, input_size = sface.template, sface.input_size

    at = {t: LowKey([sface, Dlibish()], torch.nn.Identity(), get_preset("default", target=t))._targets for t in (0.0, 1.0, 2.0)}
    assert at[0.0] == {"sface": sface.threshold, "dlibish": 0.9}
    assert at[1.0]["sface"] == pytest.approx(sface.stranger) and at[1.0]["dlibish"] == pytest.approx(0.8)
    assert at[2.0]["dlibish"] == pytest.approx(0.7)


@pytest.mark.slow
def test_holdout_bench_end_to_end_on_a_crop_and_the_group(tmp_path):
    import json
    import subprocess
    import sys

    report = tmp_path / "holdout.json"
    done = subprocess.run(
        [sys.executable, "-m", "lowkeyd", "bench", "--holdout", "--presets", "default", "--photos", "obama3-crop112.png,group.jpg",
         "--folds", "keras_facenet,dlib", "--set", "steps=2", "--json", str(report)],
        capture_output=True, text=True, timeout=1200, check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = {line.split("│")[1].strip(): line for line in done.stdout.splitlines() if line.count("│") > 8}
    assert {"keras_facenet", "dlib", "worst fold", "crop112", "group", "all"} <= set(rows), done.stdout
    assert "worst smallest margin after social: " in done.stdout
    run = json.loads(report.read_text())
    assert run["set"] == "varied" and run["subset"] and run["photos"] == ["obama3-crop112.png", "group.jpg"]
    folds = run["presets"]["default(steps=2)"]["folds"]
    assert [f["heldout"] for f in folds] == ["keras_facenet", "dlib"]
    for fold in folds:
        assert fold["heldout"] not in fold["members"] and len(fold["members"]) == 3
        faces = {f["name"]: f for f in fold["face_records"]}
        assert list(faces) == ["obama3-crop112.png:obama", "group.jpg:obama", "group.jpg:biden", "group.jpg:astronaut"]
        # Matched against the whole set's clean photos of obama from other sources, never obama3's variants.
        gallery = faces["obama3-crop112.png:obama"]["gallery"]
        assert {"obama.jpg:obama", "group.jpg:obama", "obama2-q50.jpg:obama"} <= set(gallery)
        assert not {"obama3.jpg:obama", "obama3-dim.jpg:obama"} & set(gallery)
        assert len(faces["obama3-crop112.png:obama"]["cross_social"]) == len(gallery) and faces["group.jpg:biden"]["gallery"] == []
        for face in faces.values():
            assert face["steps"] == 2 and np.isfinite(face["lpips"]) and np.isfinite(face["judge_lpips"]) and face["changed_p999"] > 0
        every = fold["groups"]["all"]
        assert every["self_social"]["n"] == 4 and 0 <= every["self_social"]["low"] <= every["self_social"]["high"] <= 1
        assert fold["groups"]["group"]["faces"] == 3 and math.isfinite(fold["groups"]["all"]["psnr"]["value"])
    refused = subprocess.run(
        [sys.executable, Path(__file__).parent.parent / "scripts" / "transfer_figures.py", report, "--out", tmp_path / "transfer.json"],
        capture_output=True, text=True, check=False,
    )
    assert refused.returncode == 1 and "a subset" in refused.stderr and not (tmp_path / "transfer.json").exists()
