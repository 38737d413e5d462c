"""The face recognisers lowkeyd can attack with, by name.

dlib's ResNet is here as a torch port (:mod:`lowkeyd.engine.models.dlib_resnet`),
so it can be attacked and used in holdout folds; whether it joins the default
:data:`ENSEMBLE` is decided by the holdout bench. dlib's own runtime remains the
verifier (:mod:`lowkeyd.engine.verifier`).
"""

from __future__ import annotations

import importlib

import torch

from lowkeyd.engine.models.base import FaceEmbedder
from lowkeyd.engine.weights import cached_path, explicit_path
from lowkeyd.errors import EngineError

# The default attack ensemble: every member can be fetched from the package index.
ENSEMBLE = ("sface", "facenet_casia", "keras_facenet", "dlib")

# name -> (module, loader); imported only when that model is wanted.
_LOADERS = {
    "sface": ("lowkeyd.engine.models.sface", "load_sface"),
    "facenet_casia": ("lowkeyd.engine.models.facenet_tf", "load_facenet_casia"),
    "keras_facenet": ("lowkeyd.engine.models.facenet_keras", "load_keras_facenet"),
    "facenet_vggface2": ("lowkeyd.engine.models.facenet_tf", "load_facenet_vggface2"),
    "dlib": ("lowkeyd.engine.models.dlib_resnet", "load_dlib_resnet"),
}
# Optional members have no package-index source: offered only once their file is here.
_OPTIONAL_WEIGHTS = {"facenet_vggface2": "facenet_vggface2_pt"}


def available_embedders() -> list[str]:
    """The ensemble's members, plus each optional model whose weight file is cached or explicitly given."""
    names = list(ENSEMBLE)
    for name, weight in _OPTIONAL_WEIGHTS.items():
        given = explicit_path(weight)
        if cached_path(weight).is_file() or (given is not None and given.is_file()):
            names.append(name)
    return names


def load_embedder(name: str, device: str | torch.device = "cpu") -> FaceEmbedder:
    """Recogniser ``name``, frozen (eval mode, no parameter gradients) on ``device``."""
    try:
        module, loader = _LOADERS[name]
    except KeyError:
        raise EngineError(f"unknown face recogniser {name!r}; known: {', '.join(_LOADERS)}") from None
    model = getattr(importlib.import_module(module), loader)(device)
    if torch.device(device).type in ("cpu", "cuda"):
        # oneDNN's and cuDNN's fast convolutions are NHWC: on the 2-core CPU this took a
        # FaceNet forward+backward from 0.20 s to 0.13 s (MPS support for it is patchy).
        model = model.to(memory_format=torch.channels_last)
        model.channels_last = True
    return model.eval().requires_grad_(False)
