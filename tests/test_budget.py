"""The visibility budget is a hard limit: it holds on every kind of face, grey stays grey, no stripes."""

from __future__ import annotations

import math
from importlib.resources import files

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import load_rgb
from lowkeyd.engine.attack.budget import (
    LPIPS_PER_BUDGET,
    PHOTO_RMS_PER_BUDGET,
    PIXEL_CAP,
    FaceBudget,
    fit_scale,
    grey_faces,
    jnd_map,
)
from lowkeyd.engine.measures import changed_percentile, stripe_score
from lowkeyd.engine.presets import get_preset

VARIED = files("lowkeyd") / "samples" / "varied"
# The most any channel of a pixel may move at budget 1: the luma cap plus the chroma that may ride
# on it (Cb's share of blue, 1.772 x 0.25 of luma's limit), plus half a level of rounding.
CHANNEL_CAP = PIXEL_CAP * (1 + 1.772 * 0.25) + 0.5


def test_the_jnd_is_lowest_on_flat_mid_grey_and_higher_in_shadow_and_texture():
    flat = torch.full((1, 3, 32, 32), 127 / 255)
    dark = torch.full((1, 3, 32, 32), 20 / 255)
    texture = flat + 0.15 * torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    at = {name: float(jnd_map(x)[..., 8:24, 8:24].mean()) for name, x in (("flat", flat), ("dark", dark), ("texture", texture))}
    assert at["flat"] == pytest.approx(3.0, abs=0.01)  # Chou and Li's threshold on mid-grey
    assert at["dark"] > 2.5 * at["flat"] and at["texture"] > 2 * at["flat"], at


def test_grey_is_decided_from_the_pixels_not_the_mode():
    grey = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0)).expand(1, 3, 16, 16).clone()
    grey[:, 0, 0, 0] += 1 / 255  # a level of JPEG rounding is still grey
    tinted = grey.clone()
    tinted[:, 2, 4:12, 4:12] += 6 / 255
    masks = torch.ones(2, 1, 16, 16)
    assert grey_faces(torch.cat([grey, tinted]), masks).tolist() == [True, False]


def test_projection_keeps_every_pixel_in_its_box_and_the_face_in_its_rms_ball():
    x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(2, 1, 48, 48)
    masks[..., 8:40, 8:40] = 1
    budget = FaceBudget.for_faces(x, masks, torch.ones_like(masks), 1.0, 0.25, torch.tensor([1.0, 0.05]))
    p = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    budget.project(p)
    assert (p.abs() <= budget.limit + 1e-7).all()
    assert (p[..., :8, :] == 0).all()  # nothing outside the mask
    rms = budget.change(p).pow(2).sum((1, 2, 3)).div(3 * budget.area).sqrt() * 255
    # A face filling its photo gets the photo's RMS; one covering 5 % of it more, up to the face's own cap.
    assert rms[0] == pytest.approx(PHOTO_RMS_PER_BUDGET, rel=1e-4)
    assert PHOTO_RMS_PER_BUDGET < float(rms[1]) <= 8.0 + 1e-4


def test_bisection_finds_the_largest_scale_within_the_cap():
    scale = fit_scale(lambda s: 0.04 * s**2, 0.01, torch.ones(3))
    assert torch.allclose(scale, torch.full((3,), 0.5), atol=1 / 2**7)
    assert (0.04 * scale**2 <= 0.01).all()
    assert torch.equal(fit_scale(lambda s: 0.001 * s, 0.01, torch.ones(2)), torch.ones(2))  # within: untouched


def _varied(name: str) -> tuple[np.ndarray, bool]:
    with Image.open(VARIED / name) as im:
        return np.asarray(im.convert("RGB")), im.mode == "L"


@pytest.fixture(scope="module")
def pushy():
    """An attack pushed hard (large steps, no early stop), so every bound of the budget is reached."""
    from lowkeyd.engine.cloak import Cloaker

    return Cloaker(get_preset("default", steps=8, step_size=0.01, target=None, lpips_weight=0.0), "cpu", models=["sface"])


@pytest.fixture(scope="module")
def evaluator(pushy):
    from lowkeyd.engine.evaluate import Evaluator

    return Evaluator(pushy.resident)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["obama3-crop112.png", "small-faces.jpg", "astronaut-grey-rgb.png", "biden-grey-l.jpg"])
def test_the_budget_holds_on_every_face(pushy, evaluator, name):
    """112 px crops, 40-60 px faces, grey stored as RGB and as one channel: per pixel, PSNR, LPIPS, colour."""
    rgb, mode_l = _varied(name)
    result = pushy.cloak(rgb, luma_only=mode_l)
    assert result.cloaked == len(result.faces) >= 1
    change = np.abs(result.rgb.astype(np.int16) - rgb).max(axis=2)
    assert change.max() <= CHANNEL_CAP, change.max()
    assert changed_percentile(rgb, result.rgb) <= 24
    mse = np.mean((result.rgb.astype(np.float64) - rgb) ** 2)
    assert 10 * math.log10(255**2 / mse) >= 20 * math.log10(255 / PHOTO_RMS_PER_BUDGET) - 0.05
    check = evaluator.compare(rgb, result.rgb)
    for face in check.faces:
        assert face.lpips <= LPIPS_PER_BUDGET, face.lpips
    if (rgb.max(axis=2) == rgb.min(axis=2)).all():
        # Grey in, grey out: exactly, since R, G and B get the same change.
        assert (result.rgb.max(axis=2) == result.rgb.min(axis=2)).all()


@pytest.mark.slow
def test_grey_stored_as_rgb_from_a_jpeg_gets_no_colour():
    """A black-and-white photo stored as an RGB JPEG (channels within a level or two) gains no colour."""
    import io

    from lowkeyd.engine.cloak import Cloaker

    grey = np.asarray(Image.fromarray(load_rgb("obama.jpg")).convert("L").convert("RGB"))
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, "JPEG", quality=90)
    rgb = np.asarray(Image.open(buf).convert("RGB"))
    spread = rgb.max(axis=2).astype(int) - rgb.min(axis=2)
    result = Cloaker(get_preset("default", steps=4, step_size=0.01, target=None), "cpu", models=["sface"]).cloak(rgb)
    after = result.rgb.max(axis=2).astype(int) - result.rgb.min(axis=2)
    assert np.any(result.rgb != rgb)
    assert (after <= spread + 1).all(), int((after - spread).max())  # rounding may move one channel by a level


def _lattice(shape: tuple[int, int], period: float, angle: float) -> np.ndarray:
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.cos(2 * np.pi * (xs * math.cos(angle) + ys * math.sin(angle)) / period)


def test_the_stripe_score_flags_a_lattice_and_not_a_broad_change():
    rng = np.random.default_rng(0)
    base = np.full((256, 256, 3), 128, np.uint8)
    box = (0, 0, 256, 256)
    from scipy.ndimage import gaussian_filter

    broad = gaussian_filter(rng.normal(0, 6, (256, 256)), 1.5)
    smooth = np.clip(128 + broad[..., None].repeat(3, 2), 0, 255).astype(np.uint8)
    striped = np.clip(128 + (broad + 2.0 * _lattice((256, 256), 3.3, 0.6))[..., None].repeat(3, 2), 0, 255).astype(np.uint8)
    assert stripe_score(base, smooth, box) < 4
    assert stripe_score(base, striped, box) > 20


@pytest.mark.slow
def test_a_large_face_in_a_video_frame_gets_no_stripes():
    """A 1920x1080 frame with a 700 px face: the attack works on it downscaled and the change is upsampled.

    The release before the budget scored 41 here (its warp shrank 2:1 after a prefilter to twice the
    model's scale, which put the gradient on a lattice); a broad change scores 2-3.
    """
    from lowkeyd.engine.cloak import Cloaker

    photo = Image.fromarray(load_rgb("obama.jpg"))
    frame = np.asarray(photo.resize((photo.width * 2, photo.height * 2), Image.LANCZOS).crop((-100, 300, 1820, 1380)))
    result = Cloaker(get_preset("default", steps=12, target=None), "cpu", models=["sface"]).cloak(frame)
    assert result.cloaked == 1
    assert stripe_score(frame, result.rgb, result.faces[0].box) < 8
