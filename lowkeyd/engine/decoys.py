"""Decoy identities: faces a targeted push steers a cloaked face towards.

An untargeted attack pushes each member's embedding away from the original in
whatever direction that member finds cheapest; the members' directions need
not agree, and a recogniser outside the ensemble may follow none of them. A
targeted push gives every member the same destination, another real person,
so the change it draws is that person's features as all members see them
(Yang et al., "Towards Face Encryption by Generating Adversarial Identity
Masks", ICCV 2021; Fawkes picks its target the same way).

The decoys are the public-domain people of the bundled sample photos
(official US-government photographs: ``lowkeyd/samples/SOURCES.md``). Each
face gets the decoy its members find least like it, so nobody is steered
towards themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch
from PIL import Image

from lowkeyd.engine.faces import FaceDetector
from lowkeyd.errors import EngineError

DECOY_PHOTOS = ("biden.jpg", "astronaut.png", "obama.jpg")


@dataclass(frozen=True)
class Decoy:
    name: str
    image: torch.Tensor  # (1, 3, H, W) in [0, 1]
    landmarks: torch.Tensor  # (1, 5, 2) in image pixels


def load_decoys(detector: FaceDetector, device: torch.device) -> tuple[Decoy, ...]:
    """The largest face of each of :data:`DECOY_PHOTOS`, ready for the attack's alignment."""
    decoys = []
    for name in DECOY_PHOTOS:
        with resources.as_file(resources.files("lowkeyd") / "samples" / name) as path, Image.open(path) as image:
            rgb = np.array(image.convert("RGB"))
        faces = detector.detect(rgb)
        if not faces:
            raise EngineError(f"no face found in the decoy photo {name}")
        face = max(faces, key=lambda f: f.size)
        pixels = torch.from_numpy(rgb).to(device).permute(2, 0, 1)[None].float() / 255
        landmarks = torch.as_tensor(face.landmarks, dtype=torch.float32, device=device)[None]
        decoys.append(Decoy(name, pixels, landmarks))
    return tuple(decoys)
