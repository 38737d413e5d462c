"""David Sandberg's TensorFlow FaceNets (Inception-ResNet-v1, 512-d) as :class:`FaceNet` modules.

CASIA-WebFace (model 20180408-102900) comes as a frozen GraphDef with batch
norm folded into the convolutions (``graph_final.pb``, read with
:mod:`lowkeyd.engine.models.graphdef`); VGGFace2 (20180402-114759) as
facenet-pytorch's release state dict, which only online users can fetch.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from lowkeyd.engine.models.facenet import FaceNet
from lowkeyd.engine.models.graphdef import GraphDef, GraphDefError
from lowkeyd.errors import WeightsError

# facenet_pytorch's BasicConv2d batch norm epsilon. A folded convolution keeps
# that BatchNorm2d as an identity plus the folded offset: with a running variance
# of 1 - eps, var + eps rounds to exactly 1 in float32, so the scale is exactly 1.
_BN_EPS = 0.001

# TF block scopes -> facenet_pytorch module names.
_REPEATS = {"Repeat": "repeat_1", "Repeat_1": "repeat_2", "Repeat_2": "repeat_3"}
_SCOPE = "InceptionResnetV1/"

# Cosine thresholds; see README-level notes in the docstring of each loader.
CASIA_THRESHOLD = 0.0
VGGFACE2_THRESHOLD = 0.0


def _block_prefix(parts: list[str]) -> tuple[str, list[str]]:
    """The facenet_pytorch module of a TF block scope, and the scope parts inside the block."""
    if parts[0] in _REPEATS:
        index = int(parts[1].rsplit("_", 1)[1]) - 1  # block35_1 is the first of its Sequential
        return f"{_REPEATS[parts[0]]}.{index}", parts[2:]
    return parts[0].lower(), parts[1:]


def _stem_name(layer: str) -> str:
    """``Conv2d_1a_3x3`` -> ``conv2d_1a``: facenet_pytorch drops the kernel size from layer names."""
    return "_".join(layer.lower().split("_")[:2])


def _conv_modules(scopes: list[str]) -> dict[str, str]:
    """Map each TF convolution scope (``InceptionResnetV1/...``, no ``/weights``) to its facenet_pytorch module.

    A branch with several convolutions is an ``nn.Sequential`` in facenet_pytorch,
    numbered in TF's naming order (``0a`` < ``0b`` < ``0c`` < ``1a``); a branch
    with one is the ``BasicConv2d`` itself.
    """
    branches: dict[tuple[str, str], list[str]] = defaultdict(list)
    placed: dict[str, tuple[str, str, str]] = {}
    modules: dict[str, str] = {}
    for scope in scopes:
        parts = scope.removeprefix(_SCOPE).split("/")
        if len(parts) == 1:
            modules[scope] = _stem_name(parts[0])
            continue
        block, inner = _block_prefix(parts)
        if inner[0].startswith("Branch_"):
            branch = "branch" + inner[0].removeprefix("Branch_")
            branches[block, branch].append(inner[1])
            placed[scope] = (block, branch, inner[1])
        else:  # the residual up-projection of a block (a plain conv with bias)
            modules[scope] = f"{block}.conv2d"
    for scope, (block, branch, layer) in placed.items():
        layers = sorted(branches[block, branch])
        modules[scope] = f"{block}.{branch}" + (f".{layers.index(layer)}" if len(layers) > 1 else "")
    return modules


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def casia_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A :class:`FaceNet` state dict from the frozen CASIA-WebFace GraphDef ``graph_final.pb``.

    Raises :class:`WeightsError` when the file is not that graph.
    """
    try:
        graph = GraphDef.read(path)
    except (GraphDefError, OSError) as exc:
        raise WeightsError(f"cannot read the FaceNet CASIA graph: {exc}") from exc
    consts = graph.constants()
    convs = [graph.nodes[node.inputs[1]].name for node in graph.nodes.values() if node.op == "Conv2D"]
    scopes = [name.removesuffix("/weights") for name in convs]
    state: dict[str, torch.Tensor] = {}
    try:
        for scope, module in _conv_modules(scopes).items():
            # TF stores HWIO kernels; torch wants OIHW.
            weight = _tensor(consts[f"{scope}/weights"].transpose(3, 2, 0, 1))
            if f"{scope}/biases" in consts:
                state[f"{module}.weight"] = weight
                state[f"{module}.bias"] = _tensor(consts[f"{scope}/biases"])
                continue
            offset = _tensor(consts[f"{scope}/Conv2D_bn_offset"])
            state[f"{module}.conv.weight"] = weight
            state[f"{module}.bn.weight"] = torch.ones_like(offset)
            state[f"{module}.bn.bias"] = offset
            state[f"{module}.bn.running_mean"] = torch.zeros_like(offset)
            state[f"{module}.bn.running_var"] = torch.full_like(offset, 1.0 - _BN_EPS)
            state[f"{module}.bn.num_batches_tracked"] = torch.tensor(0)
        bottleneck = _SCOPE + "Bottleneck/"
        state["last_linear.weight"] = _tensor(consts[bottleneck + "weights"].T)
        # FaceNet's bottleneck batch norm has no learnt scale; the frozen graph feeds it a constant of ones.
        state["last_bn.weight"] = _tensor(consts[bottleneck + "BatchNorm/Const"])
        state["last_bn.bias"] = _tensor(consts[bottleneck + "BatchNorm/beta"])
        state["last_bn.running_mean"] = _tensor(consts[bottleneck + "BatchNorm/moving_mean"])
        state["last_bn.running_var"] = _tensor(consts[bottleneck + "BatchNorm/moving_variance"])
        state["last_bn.num_batches_tracked"] = torch.tensor(0)
    except KeyError as exc:
        raise WeightsError(f"{path} is not the FaceNet CASIA-WebFace graph (no constant {exc})") from exc
    return {"net." + key: value for key, value in state.items()}
