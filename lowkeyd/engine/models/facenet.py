"""FaceNet (Inception-ResNet-v1) recognisers on top of ``facenet_pytorch.InceptionResnetV1``.

Several published FaceNets share this network and differ only in their weights
and the width of the final bottleneck: David Sandberg's CASIA-WebFace and
VGGFace2 models (512-d) and the Keras port (128-d). Converters elsewhere in
this package produce state dicts for :class:`FaceNet`.
"""

from __future__ import annotations

from typing import Literal

import torch
from facenet_pytorch import InceptionResnetV1
from torch import nn

from lowkeyd.engine.models.base import FaceEmbedder

# Neither FaceNet was trained on landmark-aligned faces (they crop the detector
# box with a margin); this 160 px template is where the five landmarks fall in
# such crops of the project's sample photos.
FACENET_TEMPLATE = torch.tensor(
    [[58.4, 65.4], [108.8, 69.3], [82.0, 88.3], [54.6, 105.1], [103.2, 108.0]]
)


def prewhiten(x: torch.Tensor) -> torch.Tensor:
    """FaceNet's per-image standardisation, differentiable, as in facenet's ``prewhiten``.

    The floor of ``1/sqrt(n)`` on the standard deviation is the original's, so a
    flat image does not divide by zero.
    """
    n = x[0].numel()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True, unbiased=False)
    return (x - mean) / std.clamp_min(n**-0.5)


def fixed_standardisation(x: torch.Tensor) -> torch.Tensor:
    """``(x - 127.5) / 128`` on 0..255 pixels, what Sandberg's 2018 models were trained with."""
    return x.sub(127.5).div(128.0)


class FaceNet(FaceEmbedder):
    """Inception-ResNet-v1 on 160x160 faces with a ``embedding_dim`` bottleneck.

    ``standardisation`` is how the original model's input was normalised: per-image
    ``prewhiten`` (the Keras port) or ``fixed`` (Sandberg's 2018 CASIA and VGGFace2
    models; prewhitening them blurs same-person and other-person similarities).
    Both act on 0..255 pixels, as the originals did.
    """

    input_size = (160, 160)

    def __init__(
        self,
        name: str,
        embedding_dim: int,
        threshold: float,
        stranger: float,
        standardisation: Literal["prewhiten", "fixed"] = "prewhiten",
    ) -> None:
        super().__init__(FACENET_TEMPLATE)
        self.name = name
        self.embedding_dim = embedding_dim
        self.threshold = threshold
        self.stranger = stranger
        self._standardise = prewhiten if standardisation == "prewhiten" else fixed_standardisation
        self.net = InceptionResnetV1(pretrained=None, classify=False)
        if embedding_dim != 512:
            self.net.last_linear = nn.Linear(1792, embedding_dim, bias=False)
            self.net.last_bn = nn.BatchNorm1d(embedding_dim, eps=0.001, momentum=0.1, affine=True)

    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        return self.net(self._standardise(faces * 255.0))
