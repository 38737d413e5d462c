"""What every face recogniser in the attack ensemble looks like from outside."""

from __future__ import annotations

import torch
from torch import nn

# Order of the five landmarks everywhere in lowkeyd (MTCNN's order, as seen in the
# image): left eye, right eye, nose tip, left mouth corner, right mouth corner.
LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


class FaceEmbedder(nn.Module):
    """An aligned-face recogniser with input gradients.

    ``forward`` takes a batch of aligned faces, shape ``(B, 3, H, W)`` with
    ``(H, W) == input_size``, RGB, float in ``[0, 1]``; it applies the model's
    own normalisation internally (so gradients flow to the ``[0, 1]`` pixels)
    and returns L2-normalised embeddings of shape ``(B, embedding_dim)``.

    ``template`` is where the five landmarks (order: :data:`LANDMARKS`) sit in
    the model's input, in pixels ``(x, y)``, shape ``(5, 2)``; the attack warps
    each face onto it. ``threshold`` is the cosine similarity at or above which
    the model calls two faces the same person; ``stranger`` the typical cosine
    between two different people's faces. Models differ widely in both (dlib's
    strangers sit at 0.82, Keras FaceNet's at 0.02), so how far the attack
    pushes a face is measured on each model's own scale between the two.
    """

    name: str
    input_size: tuple[int, int]
    embedding_dim: int
    threshold: float
    # Mean cosine over the 7 different-person pairs of the bundled sample faces (3 people),
    # with lowkeyd's alignment: a small sample, but it fixes each model's scale.
    stranger: float
    channels_last: bool = False  # weights stored NHWC (see zoo.load_embedder): feed them NHWC too
    template: torch.Tensor  # a buffer (see __init__): nn.Module types its attributes loosely

    def __init__(self, template: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("template", template.to(torch.float32).reshape(5, 2), persistent=False)

    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        """The network's raw (not yet L2-normalised) embeddings of ``[0, 1]`` aligned faces."""
        raise NotImplementedError

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            faces = faces.contiguous(memory_format=torch.channels_last)
        return nn.functional.normalize(self.embed(faces), dim=-1)
