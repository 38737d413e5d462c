"""The torch port of dlib's face ResNet against dlib itself (dlib-bin), on the sample photos."""

from __future__ import annotations

import dlib
import numpy as np
import pytest
import torch
from conftest import (
    OTHER_PEOPLE,
    PHOTOS,
    SAME_PERSON,
    aligned_for,
    assert_identity_sanity,
    detected_face,
    load_rgb,
)

from lowkeyd.engine.models.dlib_resnet import load_dlib_resnet, read_dlib_net
from lowkeyd.engine.models.zoo import ENSEMBLE, load_embedder
from lowkeyd.engine.verifier import dlib_box
from lowkeyd.engine.weights import weight_path
from lowkeyd.errors import WeightsError


@pytest.fixture(scope="module")
def model():
    return load_dlib_resnet()


@pytest.fixture(scope="module")
def dlib_net():
    return dlib.face_recognition_model_v1(str(weight_path("dlib_resnet_v1")))


@pytest.fixture(scope="module")
def chips() -> dict[str, np.ndarray]:
    """dlib's own 150 px face chip of each sample face (its 5-point predictor on the verifier's box)."""
    predictor = dlib.shape_predictor(str(weight_path("dlib_shape_predictor_5")))
    out = {}
    for name in PHOTOS:
        image = load_rgb(name)
        shape = predictor(image, dlib.rectangle(*dlib_box(detected_face(name).box)))
        out[name] = dlib.get_face_chip(image, shape, 150, 0.25)
    return out


def _as_input(chip: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(chip.copy()).permute(2, 0, 1)[None].float() / 255


def test_reader_takes_the_whole_file_apart():
    net = read_dlib_net(weight_path("dlib_resnet_v1"))
    assert net.loss == "loss_metric_2" and net.input_size == (150, 150)
    assert net.input_mean == pytest.approx((122.782, 117.001, 104.298), abs=1e-4)
    kinds = [layer.kind for layer in net.layers]
    # 29 convolutions, each followed by its frozen batch norm; 14 residual blocks; one fc.
    assert kinds.count("con_4") == kinds.count("affine_") == 29
    assert kinds.count("add_prev_") == 14 and kinds[-1] == "fc_2"


def test_matches_dlib_on_its_own_face_chips(model, dlib_net, chips):
    batch = torch.cat([_as_input(chips[name]) for name in PHOTOS])
    with torch.no_grad():
        ours = model.embed(batch).numpy()
    for i, name in enumerate(PHOTOS):
        reference = np.array(dlib_net.compute_face_descriptor(chips[name]))
        assert np.abs(ours[i] - reference).max() <= 5e-7, name  # README: parity with dlib 5e-7


def test_zoo_model_is_nhwc_frozen_and_equal_to_the_plain_one(model, chips):
    zoo_model = load_embedder("dlib")
    assert "dlib" in ENSEMBLE  # chosen by the holdout bench: the largest ensemble transfers best
    assert zoo_model.channels_last and not zoo_model.training
    assert all(not p.requires_grad for p in zoo_model.parameters())
    face = _as_input(chips["biden.jpg"])
    with torch.no_grad():
        assert torch.allclose(zoo_model(face), model(face), atol=1e-5)


def test_input_gradients_are_finite_and_nonzero(model):
    faces = aligned_for(model)
    batch = torch.cat([faces["obama.jpg"], faces["biden.jpg"]]).requires_grad_(True)
    target = model(faces["obama2.jpg"]).detach()
    (model(batch) @ target.T).sum().backward()
    assert torch.isfinite(batch.grad).all() and batch.grad.abs().sum() > 0


def test_template_alignment_sees_what_dlibs_chips_show(model, dlib_net, chips):
    """Faces warped onto the fitted template get descriptors close to dlib's own pipeline's."""
    faces = aligned_for(model)
    with torch.no_grad():
        for name in PHOTOS:
            ours = model.embed(faces[name])[0].numpy()
            reference = np.array(dlib_net.compute_face_descriptor(chips[name]))
            assert np.linalg.norm(ours - reference) < 0.25, name  # measured 0.10-0.18; dlib's threshold is 0.6


def test_identity_sanity_and_threshold(model):
    faces = aligned_for(model)
    with torch.no_grad():
        emb = {name: model(face)[0] for name, face in faces.items()}
    sim = {(a, b): float(emb[a] @ emb[b]) for a in PHOTOS for b in PHOTOS}
    assert_identity_sanity(sim)
    assert all(sim[a, b] >= model.threshold for a in SAME_PERSON for b in SAME_PERSON)
    assert all(sim[a, b] < model.threshold for a in SAME_PERSON for b in OTHER_PEOPLE)


def test_other_files_are_refused_with_a_clear_error(tmp_path):
    data = weight_path("dlib_resnet_v1").read_bytes()
    cut = tmp_path / "cut.dat"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="file ends early"):
        read_dlib_net(cut)
    with pytest.raises(WeightsError, match="not dlib's face recognition ResNet"):
        read_dlib_net(weight_path("dlib_shape_predictor_5"))
