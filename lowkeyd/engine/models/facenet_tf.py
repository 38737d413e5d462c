"""David Sandberg's 2018 TensorFlow FaceNets (Inception-ResNet-v1, 512-d) as :class:`FaceNet` modules.

CASIA-WebFace (model 20180408-102900) comes as a frozen GraphDef with batch
norm folded into the convolutions (``graph_final.pb``, read with
:mod:`lowkeyd.engine.models.graphdef`); VGGFace2 (20180402-114759) as
facenet-pytorch's release state dict, which only online users can fetch.

Both were trained with *fixed* image standardisation, ``(x - 127.5) / 128``
on 0..255 pixels, not per-image prewhitening: facenet's README says so for
the 2018 models ("Note that the models uses fixed image standardization"),
its LFW evaluation of them passes ``--use_fixed_image_standardization``, and
facenet-pytorch feeds its copies of the same weights
``fixed_image_standardization``. On the project's sample photos it matters:
CASIA's same-person cosines are 0.69-0.75 against <= 0.22 for other people
with it, 0.60-0.71 against up to 0.48 with prewhitening.

Match threshold (cosine, both models): 0.45, the FaceNet paper's squared-L2
threshold of 1.1 on unit embeddings (Schroff et al. 2015, fig. 1; cos = 1 -
d^2/2). DeepFace's threshold for the VGGFace2 model ("Facenet512",
euclidean_l2 1.04, so cos 0.46) agrees. Neither author publishes one for these
exact models. On the sample photos CASIA sits well clear of it (above).
"""

from __future__ import annotations

import pickle
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from lowkeyd.engine.models.facenet import FaceNet
from lowkeyd.engine.models.graphdef import GraphDef, GraphDefError
from lowkeyd.engine.weights import converted_state_dict, weight_path
from lowkeyd.errors import WeightsError

# facenet_pytorch's BasicConv2d batch norm epsilon. A folded convolution keeps
# that BatchNorm2d as an identity plus the folded offset: with a running variance
# of 1 - eps, var + eps rounds to exactly 1 in float32, so the scale is exactly 1.
_BN_EPS = 0.001

# TF block scopes -> facenet_pytorch module names.
_REPEATS = {"Repeat": "repeat_1", "Repeat_1": "repeat_2", "Repeat_2": "repeat_3"}
_SCOPE = "InceptionResnetV1/"

# See the module docstring for where this comes from.
SANDBERG_THRESHOLD = 0.45


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
    state: dict[str, torch.Tensor] = {}
    try:
        consts = graph.constants()
        # A Conv2D's second input is its kernel constant, "<layer scope>/weights".
        scopes = [node.inputs[1].removesuffix("/weights") for node in graph.nodes.values() if node.op == "Conv2D"]
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
    except (KeyError, IndexError, ValueError) as exc:
        raise WeightsError(f"{path} is not the FaceNet CASIA-WebFace graph ({type(exc).__name__}: {exc})") from exc
    return {"net." + key: value for key, value in state.items()}


def vggface2_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A :class:`FaceNet` state dict from facenet-pytorch's ``20180402-114759-vggface2.pt``.

    The release file is an ``InceptionResnetV1`` state dict with its training
    classifier (``logits.*``, 8631 VGGFace2 identities), which an embedder does not use.
    """
    try:
        release = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise WeightsError(f"cannot read the FaceNet VGGFace2 state dict {path}: {exc}") from exc
    if not isinstance(release, dict) or "last_linear.weight" not in release:
        raise WeightsError(f"{path} is not facenet-pytorch's InceptionResnetV1 state dict")
    return {"net." + key: value for key, value in release.items() if not key.startswith("logits.")}


# CASIA's, measured on the sample faces; VGGFace2's weights are not to be had offline, so it
# borrows CASIA's (same network, loss and threshold) until someone measures it.
_STRANGER = 0.168


def _loaded(name: str, state: dict[str, torch.Tensor], device: str | torch.device) -> FaceNet:
    model = FaceNet(name, embedding_dim=512, threshold=SANDBERG_THRESHOLD, stranger=_STRANGER, standardisation="fixed")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # missing/unexpected keys or shape mismatches
        raise WeightsError(f"{name}: weights do not fit Inception-ResNet-v1 ({exc})") from exc
    return model.eval().to(device)


def load_facenet_casia(device: str | torch.device = "cpu") -> FaceNet:
    """FaceNet CASIA-WebFace (20180408-102900), converted once from its GraphDef and cached."""
    return _loaded("facenet_casia", converted_state_dict("facenet_casia_graphdef", casia_state_dict), device)


def load_facenet_vggface2(device: str | torch.device = "cpu") -> FaceNet:
    """FaceNet VGGFace2 (20180402-114759) from facenet-pytorch's release file (needs internet the first time)."""
    return _loaded("facenet_vggface2", vggface2_state_dict(weight_path("facenet_vggface2_pt")), device)
