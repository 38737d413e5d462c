"""SFace (OpenCV Zoo, 2021dec): a 128-d recogniser for 112x112 ArcFace-aligned faces.

The ONNX file is a plain chain: a 3x3 convolution, thirteen depthwise-separable
blocks (each convolution followed by batch norm and PReLU), a batch norm over
the 7x7x1024 map, a fully connected layer and a final batch norm. That chain
is rebuilt here from ordinary torch modules and the ONNX initialisers are
copied into it once (cached as safetensors), so loading needs neither the ONNX
graph nor a converter, and gradients reach the input pixels.

OpenCV's ``FaceRecognizerSF`` feeds the network ``blobFromImage(face,
swapRB=True)``: RGB, 0..255; the graph itself then computes ``(x - 127.5) / 128``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lowkeyd.engine.models.base import FaceEmbedder
from lowkeyd.errors import WeightsError
from lowkeyd.engine.weights import converted_state_dict

# ArcFace's 112x112 five-point template, the one OpenCV's FaceRecognizerSF.alignCrop uses.
ARCFACE_TEMPLATE = torch.tensor(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)

# (output channels, depthwise stride) of the separable blocks conv_2 .. conv_14.
_BLOCKS = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)  # fmt: skip
_CONV_BN_EPS = 1e-3
_HEAD_BN_EPS = 2e-5
# Bump when the module layout or _onnx_state_dict's output changes (invalidates cached conversions).
_CONVERSION_VERSION = 1


class _ConvBNPReLU(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=_CONV_BN_EPS)
        self.prelu = nn.PReLU(c_out)


class SFaceNet(nn.Module):
    """The SFace network on its own scale: RGB in 0..255, raw (unnormalised) 128-d out.

    Module names follow the ONNX layer names (``conv_2_dw`` is ``conv_2_dw_*``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleDict({"conv_1": _ConvBNPReLU(3, 32, 3, 1, 1)})
        channels = 32
        for index, (c_out, stride) in enumerate(_BLOCKS, start=2):
            self.layers[f"conv_{index}_dw"] = _ConvBNPReLU(channels, channels, 3, stride, channels)
            self.layers[f"conv_{index}"] = _ConvBNPReLU(channels, c_out, 1, 1, 1)
            channels = c_out
        self.bn1 = nn.BatchNorm2d(channels, eps=_HEAD_BN_EPS)
        self.pre_fc1 = nn.Linear(channels * 7 * 7, 128)
        self.fc1 = nn.BatchNorm1d(128, eps=_HEAD_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - 127.5) * 0.0078125
        for layer in self.layers.values():
            x = layer(x)
        # The graph's Dropout (ratio 0.4) is an identity at inference and is left out.
        return self.fc1(self.pre_fc1(self.bn1(x).flatten(1)))


def _onnx_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """:class:`SFaceNet`'s state dict from the ONNX initialisers (named ``conv_2_dw_batchnorm_gamma`` etc.)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    consts = {init.name: torch.from_numpy(numpy_helper.to_array(init).copy()) for init in graph.initializer}
    bn_fields = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_var": "running_var"}
    state: dict[str, torch.Tensor] = {}
    for key in SFaceNet().layers.keys():
        state[f"layers.{key}.conv.weight"] = consts[f"{key}_conv2d_weight"]
        for onnx_field, torch_field in bn_fields.items():
            state[f"layers.{key}.bn.{torch_field}"] = consts[f"{key}_batchnorm_{onnx_field}"]
        # ONNX PRelu slopes are (C, 1, 1) to broadcast over H, W; torch's PReLU wants (C,).
        state[f"layers.{key}.prelu.weight"] = consts[f"{key}_relu_gamma"].reshape(-1)
    for head in ("bn1", "fc1"):
        for onnx_field, torch_field in bn_fields.items():
            state[f"{head}.{torch_field}"] = consts[f"{head}_{onnx_field}"]
    state["pre_fc1.weight"] = consts["pre_fc1_weight"]
    state["pre_fc1.bias"] = consts["pre_fc1_bias"]
    return state


class SFace(FaceEmbedder):
    """SFace on ``[0, 1]`` RGB 112x112 ArcFace-aligned faces."""

    name = "sface"
    input_size = (112, 112)
    embedding_dim = 128
    threshold = 0.363  # cosine; OpenCV's documented SFace threshold
    stranger = 0.145

    def __init__(self) -> None:
        super().__init__(ARCFACE_TEMPLATE)
        self.net = SFaceNet()

    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        return self.net(faces * 255.0)


def load_sface(device: str | torch.device = "cpu") -> SFace:
    """SFace with the verified OpenCV Zoo weights, frozen and in eval mode."""
    model = SFace()
    state = converted_state_dict("sface_2021dec", _onnx_state_dict, _CONVERSION_VERSION)
    # ONNX carries no batch-norm step counters (unused at inference); every other tensor must be there.
    result = model.net.load_state_dict(state, strict=False)
    missing = [key for key in result.missing_keys if not key.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise WeightsError(f"SFace weights do not fit: missing {missing}, unexpected {result.unexpected_keys}")
    return model.eval().requires_grad_(False).to(device)
