"""The cloaking engine on real photos with real models.

The attack tests run a short preset (a few steps) on a 2-core CPU: they check
behaviour (protection rises, the change stays small and local), not the
targets of the full presets, which ``lowkeyd bench`` measures.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from conftest import load_rgb
from lowkeyd.engine.attack.views import gaussian_blur
from lowkeyd.engine.presets import PRESETS, Preset, get_preset
from lowkeyd.errors import EngineError

# Enough steps to matter, few enough for CI: early stopping is off so the count is exact.
SHORT = {"steps": 8, "step_size": 0.002, "target": None}


# -- presets ------------------------------------------------------------------------------


def test_paper_preset_is_the_published_setting():
    paper = PRESETS["paper"]
    assert (paper.steps, paper.step_size, paper.step_rule, paper.lpips_weight) == (50, 0.0025, "sign", 0.05)
    assert (paper.blur_kernel, paper.blur_sigma, paper.flip, paper.feature_scale) == (7, 3.0, True, "per_dim")
    assert paper.target is None and paper.ti_kernel == 0  # the reference runs every step, unsmoothed


def test_overrides_round_trip_through_a_yaml_config():
    preset = get_preset("default", steps=12, chroma_scale=0.25)
    text = yaml.safe_dump({"attack": preset.model_dump()})
    again = Preset.model_validate(yaml.safe_load(text)["attack"])
    assert again == preset and again.steps == 12 and again.chroma_scale == 0.25
    assert get_preset("default", steps=12).name == "default(steps=12)"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"steps": -1}, "'steps'"), ({"stepz": 3}, "'stepz'"), ({"step_rule": "adam"}, "'step_rule'")],
)
def test_bad_override_names_the_setting(overrides, message):
    with pytest.raises(EngineError, match=message):
        get_preset("default", **overrides)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(EngineError, match="paper, default, strong"):
        get_preset("fastest")


# -- pieces of the objective -----------------------------------------------------------------


def test_gaussian_blur_keeps_flat_images_and_smooths_noise():
    flat = torch.full((1, 3, 32, 32), 0.4)
    assert torch.allclose(gaussian_blur(flat, 7, 3.0), flat, atol=1e-6)
    noise = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert gaussian_blur(noise, 7, 3.0).std() < 0.5 * noise.std()


# -- the attack on real photos ----------------------------------------------------------------


@pytest.fixture(scope="module")
def cloaker():
    from lowkeyd.engine.cloak import Cloaker

    return Cloaker(get_preset("default", **SHORT), "cpu")


@pytest.fixture(scope="module")
def evaluator(cloaker):
    from lowkeyd.engine.evaluate import Evaluator

    return Evaluator(cloaker.resident)


@pytest.mark.slow
def test_cloaking_obama_moves_him_away_from_his_other_photos(cloaker, evaluator):
    original = load_rgb("obama.jpg")
    result = cloaker.cloak(original)
    assert (result.cloaked, result.too_small) == (1, 0)
    face = result.faces[0]
    assert face.steps == SHORT["steps"]
    # Every member now sees a less similar face than the untouched original (cosine 1): at least a
    # quarter of the way to its threshold, on its own scale (dlib's cosines sit far closer to 1).
    assert all(s < 1 - 0.25 * (1 - face.thresholds[n]) for n, s in face.similarity.items()), face.similarity

    check = evaluator.compare(original, result.rgb).faces[0]
    assert check.found and check.scores["dlib"] > 0.3  # dlib, in its own runtime, sees a change too
    assert check.lpips < 0.1
    # Cross-photo: the cloaked photo is further from obama2 than the clean one was.
    gallery = evaluator.largest_face(load_rgb("obama2.jpg"))
    clean = evaluator.match(evaluator.largest_face(original), gallery)[0]["dlib"]
    cloaked = evaluator.match(evaluator.largest_face(result.rgb), gallery)[0]["dlib"]
    assert cloaked > clean + 0.1, (clean, cloaked)


@pytest.mark.slow
def test_every_face_of_a_two_person_photo_changes_and_nothing_else(cloaker):
    left = load_rgb("astronaut.png")
    right = np.asarray(
        __import__("PIL.Image", fromlist=["Image"]).fromarray(load_rgb("obama.jpg")).resize((410, 512))
    )
    photo = np.concatenate([left, right], axis=1)
    result = cloaker.cloak(photo)
    assert result.cloaked == 2
    changed = np.any(result.rgb != photo, axis=2)
    for face in result.faces:
        x1, y1, x2, y2 = (int(v) for v in face.box)
        assert changed[y1:y2, x1:x2].mean() > 0.3, face.box  # the face itself is perturbed
    # Outside the faces' blend regions the photo is bit-identical.
    outside = np.ones_like(changed)
    for face in result.faces:
        x1, y1, x2, y2 = face.box
        pad = 0.6 * face.size
        outside[max(0, int(y1 - pad)) : int(y2 + pad), max(0, int(x1 - pad)) : int(x2 + pad)] = False
    assert not changed[outside].any()
    assert changed.mean() < 0.5


def test_a_photo_without_faces_passes_through_unchanged(cloaker):
    rng = np.random.default_rng(3)
    landscape = (rng.random((300, 500, 3)) * 60 + np.linspace(80, 200, 500)[None, :, None]).astype(np.uint8)
    result = cloaker.cloak(landscape)
    assert result.faces == [] and result.cloaked == 0
    assert np.array_equal(result.rgb, landscape)


def test_too_small_faces_are_left_alone_and_reported():
    from lowkeyd.engine.cloak import Cloaker

    # A preset whose smallest face to cloak is larger than the astronaut's (~110 px).
    tiny_limit = Cloaker(get_preset("default", min_face_px=200, steps=0), "cpu", models=["sface"])
    original = load_rgb("astronaut.png")
    result = tiny_limit.cloak(original)
    assert (result.cloaked, result.too_small) == (0, 1)
    assert result.faces[0].status == "too_small"
    assert np.array_equal(result.rgb, original)


def test_the_attack_and_the_judges_share_one_set_of_loaded_models(cloaker, evaluator):
    from lowkeyd.engine.evaluate import DLIB

    resident = cloaker.resident
    assert evaluator.detector is resident.detector and evaluator.lpips is resident.lpips
    judged = {j.name: j.model for j in evaluator.judges if j.name != DLIB}
    assert all(judged[m.name] is m for m in cloaker.models if m.name != DLIB)
    # A holdout fold and another preset run on the same loaded models; nothing is loaded again.
    fold = cloaker.with_members(["sface"]).with_preset(get_preset("strong"))
    assert [m.name for m in fold.models] == ["sface"] and fold.models[0] is judged["sface"]
    assert fold.resident.lpips is resident.lpips and fold.detector is resident.detector
    with pytest.raises(EngineError, match="not loaded: arcface"):
        cloaker.with_members(["arcface"])


def test_engine_refuses_what_is_not_rgb_pixels(cloaker):
    with pytest.raises(EngineError, match="uint8 RGB"):
        cloaker.cloak(np.zeros((10, 10), np.uint8))


def test_luma_only_cloak_changes_r_g_and_b_alike():
    """Grayscale photos are stored as grayscale: the cloak must survive that conversion."""
    from lowkeyd.engine.cloak import Cloaker

    gray = np.repeat(np.asarray(load_rgb("astronaut.png").mean(axis=2), np.uint8)[..., None], 3, axis=2)
    result = Cloaker(get_preset("default", steps=2, target=None), "cpu", models=["sface"]).cloak(gray, luma_only=True)
    delta = result.rgb.astype(int) - gray
    assert np.abs(delta).sum() > 0
    assert np.array_equal(delta[..., 0], delta[..., 1]) and np.array_equal(delta[..., 1], delta[..., 2])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sface", "facenet_casia"])
def test_bf16_gradients_agree_with_fp32(name):
    """'auto' precision uses bf16 on GPUs: its input gradients must point where fp32's do."""
    from conftest import aligned_face
    from lowkeyd.engine.models.zoo import load_embedder

    model = load_embedder(name)
    face = aligned_face("obama.jpg", model.template, model.input_size)
    target = model(aligned_face("obama2.jpg", model.template, model.input_size)).detach()

    def gradient(dtype: torch.dtype | None) -> torch.Tensor:
        x = face.clone().requires_grad_()
        if dtype is None:
            emb = model(x)
        else:
            with torch.autocast("cpu", dtype=dtype):
                emb = model(x).float()
        (emb - target).pow(2).sum().backward()
        return x.grad.flatten()

    agreement = torch.nn.functional.cosine_similarity(gradient(None), gradient(torch.bfloat16), dim=0)
    print(f"{name}: bf16 vs fp32 input-gradient cosine {agreement:.3f}")
    assert agreement > 0.9


def test_how_much_of_the_crop_a_face_fills_does_not_change_its_step(cloaker):
    """The L2 step is normalised over the face's mask: padding the crop moves the face's pixels just as far."""
    from lowkeyd.engine.attack import LowKey

    rgb = load_rgb("astronaut.png")
    crop = cloaker._cut(0, rgb, cloaker.detector.detect(rgb)[0])
    # At x' = x the gradient is zero: the attack starts from its seeded noise, so the step is what one step
    # adds to the same start.
    start, one_step = (
        LowKey(cloaker.models, cloaker.resident.lpips, get_preset("default", steps=n, target=None, chroma_scale=1.0))
        for n in (0, 1)
    )

    def moved(pad: int) -> float:
        pixels = torch.nn.functional.pad(crop.pixels, (pad,) * 4, mode="replicate")
        mask = torch.nn.functional.pad(crop.mask, (pad,) * 4)
        args = (pixels[None], (crop.landmarks + pad)[None], mask[None], (crop.region + pad)[None])
        change = one_step(*args).adversarial[0] - start(*args).adversarial[0]
        change = change[:, pad : pad + crop.pixels.shape[-1], pad : pad + crop.pixels.shape[-1]]
        return float(change.pow(2).mean().sqrt())

    tight, padded = moved(0), moved(128)
    assert tight > 0
    assert padded == pytest.approx(tight, rel=0.05)


def test_a_member_already_past_its_target_stops_pulling(cloaker):
    """focus_members: the step goes to the members still behind, not to one that is already far enough."""
    import copy

    from lowkeyd.engine.attack import LowKey

    sface, casia = (next(m for m in cloaker.models if m.name == n) for n in ("sface", "facenet_casia"))
    satisfied = copy.copy(sface)
    satisfied.threshold = satisfied.stranger = 2.0  # every cosine is past this target from the first look on
    rgb = load_rgb("astronaut.png")
    crop = cloaker._cut(0, rgb, cloaker.detector.detect(rgb)[0])
    args = (crop.pixels[None], crop.landmarks[None], crop.mask[None], crop.region[None])

    def sface_similarity(focus: bool) -> float:
        preset = get_preset("default", steps=4, min_steps=4, focus_members=focus)
        return float(LowKey([satisfied, casia], cloaker.resident.lpips, preset)(*args).similarity["sface"][0])

    focused, unfocused = sface_similarity(True), sface_similarity(False)
    print(f"sface cosine after 4 steps: focused {focused:.3f}, unfocused {unfocused:.3f}")
    assert focused > unfocused + 0.05


@pytest.mark.slow
def test_lowkeyd_bench_prints_its_table_and_the_megapixel_ratio():
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "lowkeyd", "bench", "--presets", "default", "--photos", "astronaut.png",
         "--set", "steps=1", "--megapixels"],
        capture_output=True, text=True, timeout=900, check=False,
    )
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if "default(steps=1)" in line and "│" in line)
    cells = [c.strip() for c in row.split("│")[1:-1]]
    assert cells[2] == "1"  # steps
    assert cells[-1] == "-"  # no paper run to compare with
    assert "one face in a 12 MP photo takes" in done.stdout
