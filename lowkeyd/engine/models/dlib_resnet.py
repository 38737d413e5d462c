"""dlib's face recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) in torch, read from dlib's own file.

dlib runs this network without gradients, so it could only judge cloaks; here it
is rebuilt so the attack can differentiate through it.

The file format (dlib's ``serialize.h``, ``dnn/core.h``, ``dnn/layers.h``):

- integers: a control byte (bit 7: negative; low 4 bits: byte count) and then
  the magnitude, little endian; floats and doubles: two such integers,
  mantissa and exponent, the value being ``mantissa * 2**exponent``; strings:
  a length and the bytes; bools: ASCII ``'0'``/``'1'``; tensors: version 2,
  four dimensions and raw little-endian float32 data; ``alias_tensor``:
  version 1 and four dimensions (a view into the layer's ``params``).
- the network nests: the loss layer (version, ``loss_metric_2``, margin,
  distance threshold) wraps its subnetwork, each layer wraps the one below.
  Each wrapper writes its version before its subnetwork, so the file holds
  every wrapper's version top-down (add_layer 2, the bottom add_layer over
  the input 3, tag and skip layers 1), then the input layer, then each
  add_layer's own part bottom-up: its details (named by a version string such
  as ``con_4``), three bools, three (empty) tensors, and for the bottom one
  an int (sample expansion factor).

The network (``anet_type`` of dlib's ``dnn_face_recognition_ex.cpp``) and the
conventions a port must copy:

- input: RGB 150x150, ``(pixel - mean) / 256`` per channel, the means stored in
  the file (122.782, 117.001, 104.298);
- ``con``: a correlation with bias, filters stored like torch's (out, in, h, w);
  stride-2 convolutions have no padding (dlib's default is ``k // 2`` only for
  stride 1), so 3x3/2 maps 8 px to 3 and 4 px to 1;
- ``affine``: the trained batch norm frozen into a per-channel scale and shift;
  each follows a convolution and is folded into it here (an exact identity up
  to float rounding, and one operation less per layer);
- a residual block is ``relu(x + affine(con(relu(affine(con(x))))))``; the
  down-sampling one adds a 2x2/2 average pool of ``x`` instead of ``x``. Where
  the two sides differ in size (channels 32 vs 64; 4x4 pooled vs 3x3
  convolved) dlib's ``add_prev`` zero-pads the smaller at the end of each
  dimension, and so does :func:`_add_padded`;
- stem: 7x7/2 convolution, affine, relu, 3x3/2 max pool (unpadded);
  then 3 blocks of 32, 4 of 64, 3 of 128, 3 of 256 and one of 256 channels (each
  level's first block down-sampling, except the first level's); a mean over
  the remaining 2x2 map, and a 256 -> 128 linear layer without bias. The
  descriptor is not normalised: dlib compares descriptors by L2 distance.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lowkeyd.engine.models.base import FaceEmbedder
from lowkeyd.engine.weights import converted_state_dict
from lowkeyd.errors import WeightsError

# Where the five landmarks (LANDMARKS order) fall on dlib's 150 px face chip,
# get_face_chip_details(shape, 150, 0.25). Fitted on the five sample photos: dlib's
# 5-point predictor, on the MTCNN box mapped by verifier.dlib_box, gave each photo's
# chip transform (checked by re-sampling dlib's chip from the photo with it), the
# MTCNN landmarks mapped through it were averaged. The photos agree within 4 px at
# the eyes but differ by 11-17 px at nose and mouth, where MTCNN and dlib's predictor
# disagree as the head turns. Faces warped onto this template get descriptors within
# 0.10-0.18 (L2; cosine 0.991-0.997) of those of dlib's own chips.
DLIB_TEMPLATE = torch.tensor(
    [[46.71, 45.09], [101.16, 45.55], [75.96, 76.19], [48.54, 102.93], [100.92, 102.65]]
)

# dlib decides "same person" at an L2 distance of 0.6 between raw descriptors. For
# two descriptors of norm n, d^2 = 2 n^2 (1 - cos), so its rule is cos >= 1 - 0.18 / n^2.
# The norms sit in a narrow band: 1.36-1.46 on the sample faces (mean 1.40, with dlib's
# chips or with this template), which puts the equivalent cosine at 0.903-0.916, 0.908
# at the mean. Measured with the template: same person 0.943-0.974, others 0.806-0.844.
THRESHOLD = 0.908

# Bump when the module layout or _dlib_state_dict's output changes (invalidates cached conversions).
_CONVERSION_VERSION = 1

# (channels, blocks, first block down-samples) per level, input side first.
_LEVELS = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))

# The version strings dlib writes for each layer kind, in this model's file.
_DETAILS = {
    "con": "con_4",
    "affine": "affine_",
    "relu": "relu_",
    "max_pool": "max_pool_2",
    "avg_pool": "avg_pool_2",
    "add_prev": "add_prev_",
    "fc": "fc_2",
}
_WRAPPERS = ("tag", "skip")
# A con_4 layer's shape, in the order dlib writes it.
_CON_GEOMETRY = ("num_filters", "nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")  # layers with no state of their own: only a version in the file


# --- dlib's serialisation ------------------------------------------------------------


class _Reader:
    """Reads dlib's serialised primitives from a byte buffer; any misfit is a :class:`WeightsError`."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.pos, self.path = data, 0, path

    def fail(self, what: str) -> WeightsError:
        return WeightsError(f"{self.path} is not dlib's face recognition ResNet: {what} at byte {self.pos}")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail("file ends early")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def integer(self) -> int:
        control = self.take(1)[0]
        value = int.from_bytes(self.take(control & 0x0F), "little")
        return -value if control & 0x80 else value

    def number(self) -> float:
        mantissa = self.integer()
        exponent = self.integer()
        if exponent >= 32000:  # float_details' codes for inf, -inf, nan
            raise self.fail("non-finite number")
        return mantissa * 2.0**exponent

    def string(self) -> str:
        return self.take(self.integer()).decode("latin-1")

    def flag(self) -> bool:
        flag = self.take(1)
        if flag not in (b"0", b"1"):
            raise self.fail("bad bool")
        return flag == b"1"

    def tensor(self) -> np.ndarray:
        if self.integer() != 2:
            raise self.fail("unknown tensor version")
        shape = tuple(self.integer() for _ in range(4))
        if min(shape) < 0:
            raise self.fail("negative tensor size")
        return np.frombuffer(self.take(4 * math.prod(shape)), dtype="<f4").reshape(shape)

    def alias(self) -> tuple[int, ...]:
        if self.integer() != 1:
            raise self.fail("unknown alias_tensor version")
        return tuple(self.integer() for _ in range(4))


@dataclass(frozen=True)
class DlibLayer:
    """One add_layer's details: ``kind`` is dlib's version string (``con_4``...), ``fields`` its contents."""

    kind: str
    fields: dict


@dataclass(frozen=True)
class DlibNet:
    """A dlib network file: ``wrappers`` are the layers' versions top-down, ``layers`` the add_layers input first."""

    loss: str
    wrappers: list[int]
    input_mean: tuple[float, float, float]
    input_size: tuple[int, int]
    layers: list[DlibLayer]


def _read_details(r: _Reader) -> DlibLayer:
    kind = r.string()
    if kind == "con_4":
        params = r.tensor()
        fields = {"params": params, **{name: r.integer() for name in _CON_GEOMETRY}}
        fields |= {"filters": r.alias(), "biases": r.alias()}
        for _ in range(4):  # learning-rate and weight-decay multipliers: training only
            r.number()
    elif kind == "affine_":
        fields = {"params": r.tensor(), "gamma": r.alias(), "beta": r.alias(), "mode": r.integer()}
    elif kind in ("relu_", "add_prev_"):
        fields = {}
    elif kind in ("max_pool_2", "avg_pool_2"):
        fields = {"window": tuple(r.integer() for _ in range(6))}  # nr, nc, stride y, x, padding y, x
    elif kind == "fc_2":
        fields = {"num_outputs": r.integer(), "num_inputs": r.integer(), "params": r.tensor()}
        fields |= {"weights": r.alias(), "biases": r.alias(), "bias_mode": r.integer()}
        for _ in range(4):
            r.number()
    else:
        raise r.fail(f"unsupported layer {kind!r}")
    return DlibLayer(kind, fields)


def read_dlib_net(path: Path) -> DlibNet:
    """The layers of a dlib ``loss_metric`` network over ``input_rgb_image_sized`` (the face ResNet's file)."""
    r = _Reader(Path(path).read_bytes(), Path(path))
    if r.integer() != 1:
        raise r.fail("unknown loss layer version")
    loss = r.string()
    if loss != "loss_metric_2":
        raise r.fail(f"loss {loss!r}, expected loss_metric_2")
    r.number(), r.number()  # the training margin and distance threshold
    wrappers: list[int] = []
    while not wrappers or wrappers[-1] != 3:  # 3: the add_layer right over the input layer
        wrappers.append(r.integer())
        if wrappers[-1] not in (1, 2, 3) or len(wrappers) > 1000:
            raise r.fail("unexpected layer version")
    if r.string() != "input_rgb_image_sized":
        raise r.fail("input layer is not input_rgb_image_sized")
    mean = (r.number(), r.number(), r.number())
    size = (r.integer(), r.integer())
    layers = []
    for version in reversed([v for v in wrappers if v != 1]):
        layers.append(_read_details(r))
        for _ in range(3):  # setup done, gradient stale, output disabled: training state
            r.flag()
        for _ in range(3):  # cached gradients and outputs, empty in a saved model
            r.tensor()
        if version == 3:
            r.integer()  # sample expansion factor
    if r.pos != len(r.data):
        raise r.fail("trailing bytes")
    return DlibNet(loss, wrappers, mean, size, layers)


# --- the network in torch ------------------------------------------------------------


def _add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a + b`` the way dlib's add_prev does it: each zero-padded at the end of every dimension to the larger size."""
    size = [max(x, y) for x, y in zip(a.shape[1:], b.shape[1:], strict=True)]

    def pad(t: torch.Tensor) -> torch.Tensor:
        (c, h, w), (tc, th, tw) = size, t.shape[1:]
        return F.pad(t, (0, w - tw, 0, h - th, 0, c - tc)) if (c, h, w) != (tc, th, tw) else t

    return pad(a) + pad(b)


class _Block(nn.Module):
    """One residual block; affine layers folded into the convolutions' weights and biases."""

    def __init__(self, c_in: int, c_out: int, down: bool) -> None:
        super().__init__()
        self.down = down
        # dlib pads a convolution only when its stride is 1.
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=2 if down else 1, padding=0 if down else 1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        if self.down:
            return F.relu(_add_padded(y, F.avg_pool2d(x, 2)))
        return F.relu(y + x)


class DlibResNetNet(nn.Module):
    """The network on dlib's own scale: RGB 0..255 in, the raw 128-d descriptor out."""

    mean: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, 3, 1, 1))  # from the file
        self.stem = nn.Conv2d(3, 32, 7, stride=2)
        blocks, channels = [], 32
        for c_out, count, down in _LEVELS:
            for i in range(count):
                blocks.append(_Block(channels, c_out, down and i == 0))
                channels = c_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(256, 128, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / 256.0
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
        return self.fc(self.blocks(x).mean((2, 3)))


# What a layer of dlib's file fills or checks: a convolution, the fc layer, a pooling window, or nothing.
_Target = nn.Conv2d | nn.Linear | tuple[int, ...] | None


def _dlib_order(net: DlibResNetNet) -> list[tuple[str, _Target]]:
    """``net`` as dlib's file lists it, input first: (layer kind, the module or window it fills or checks)."""
    order: list[tuple[str, _Target]] = [("con", net.stem), ("affine", net.stem), ("relu", None)]
    order.append(("max_pool", (3, 3, 2, 2, 0, 0)))
    # nn.Sequential hands its members out as nn.Module; __init__ fills this one with _Block only.
    for block in cast("Iterable[_Block]", net.blocks):
        order += [("tag", None), ("con", block.conv1), ("affine", block.conv1), ("relu", None)]
        order += [("con", block.conv2), ("affine", block.conv2)]
        if block.down:
            order += [("tag", None), ("skip", None), ("avg_pool", (2, 2, 2, 2, 0, 0))]
        order += [("add_prev", None), ("relu", None)]
    return order + [("avg_pool", (0, 0, 1, 1, 0, 0)), ("fc", net.fc)]


def _dlib_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """:class:`DlibResNetNet`'s state dict from dlib's file, each affine folded into the convolution below it."""
    net = DlibResNetNet()
    dlib = read_dlib_net(path)
    order = _dlib_order(net)
    expected = [1 if kind in _WRAPPERS else 2 for kind, _ in reversed(order)]
    expected[-1] = 3
    if dlib.wrappers != expected or dlib.input_size != (150, 150):
        raise WeightsError(f"{path}: the layer stack is not dlib's face recognition ResNet")
    layers = [(kind, target) for kind, target in order if kind not in _WRAPPERS]
    names = {module: name for name, module in net.named_modules()}
    state = {"mean": torch.tensor(dlib.input_mean).reshape(1, 3, 1, 1)}
    pending: dict[str, np.ndarray] = {}

    def params(fields: dict, size: int, module: nn.Module) -> np.ndarray:
        flat = fields["params"].reshape(-1)
        if flat.size != size:
            raise WeightsError(f"{path}: {flat.size} parameters where {names[module]} needs {size}")
        return flat

    for (kind, target), layer in zip(layers, dlib.layers, strict=True):
        f = layer.fields
        if layer.kind != _DETAILS[kind]:
            raise WeightsError(f"{path}: found {layer.kind} where this network has {kind}")
        match kind, target:
            case "con", nn.Conv2d() as conv:
                geometry = tuple(f[key] for key in _CON_GEOMETRY)
                if geometry != (conv.out_channels, *conv.kernel_size, *conv.stride, *conv.padding):
                    raise WeightsError(f"{path}: convolution {geometry} does not fit {names[conv]}")
                flat = params(f, conv.weight.numel() + conv.out_channels, conv)
                split = conv.weight.numel()
                pending = {"weight": flat[:split].reshape(conv.weight.shape), "bias": flat[split:]}
            case "affine", nn.Conv2d() as conv:  # out = conv(x) * gamma + beta, per channel
                flat = params(f, 2 * conv.out_channels, conv)
                gamma, beta = flat[: conv.out_channels], flat[conv.out_channels :]
                name = names[conv]
                state[f"{name}.weight"] = torch.from_numpy(pending["weight"] * gamma[:, None, None, None])
                state[f"{name}.bias"] = torch.from_numpy(pending["bias"] * gamma + beta)
            case ("max_pool" | "avg_pool"), window if f["window"] != window:
                raise WeightsError(f"{path}: pooling {f['window']} where this network has {window}")
            case "fc", nn.Linear() as fc:
                if f["bias_mode"] != 1 or f["weights"][:2] != (256, 128):  # 1: FC_NO_BIAS; weights (in, out)
                    raise WeightsError(f"{path}: the last layer is not a 256 -> 128 fc_no_bias")
                state["fc.weight"] = torch.from_numpy(params(f, 256 * 128, fc).reshape(256, 128).T.copy())
    return state


class DlibResNet(FaceEmbedder):
    """dlib's face recognition ResNet on ``[0, 1]`` RGB 150x150 faces aligned to :data:`DLIB_TEMPLATE`."""

    name = "dlib"
    input_size = (150, 150)
    embedding_dim = 128
    threshold = THRESHOLD
    stranger = 0.820

    def __init__(self) -> None:
        super().__init__(DLIB_TEMPLATE)
        self.net = DlibResNetNet()

    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        return self.net(faces * 255.0)


def load_dlib_resnet(device: str | torch.device = "cpu") -> DlibResNet:
    """dlib's ResNet with the verified weight file, frozen and in eval mode (converted once, then cached)."""
    model = DlibResNet()
    model.net.load_state_dict(converted_state_dict("dlib_resnet_v1", _dlib_state_dict, _CONVERSION_VERSION))
    return model.eval().requires_grad_(False).to(device)
