"""Cloak every face in a photo: detect, cut a working crop per face, attack, put back.

The cost does not grow with megapixels: each face is attacked in a fixed-size
crop in which the face is at most ``work_face_px`` across; the perturbation is
upsampled to the face's real size and added to the full-resolution photo
inside a feathered ellipse. Every pixel outside those ellipses is bit-identical.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from lowkeyd.engine.attack import LowKey
from lowkeyd.engine.attack.budget import LPIPS_PER_BUDGET, fit_scale
from lowkeyd.engine.attack.stop import member_targets
from lowkeyd.engine.evaluate import FACE_MARGIN
from lowkeyd.engine.faces import Face, FaceDetector
from lowkeyd.engine.models.base import FaceEmbedder
from lowkeyd.engine.perceptual import phase_averaged_lpips
from lowkeyd.engine.presets import Preset
from lowkeyd.engine.resident import ResidentModels
from lowkeyd.errors import EngineError

log = logging.getLogger(__name__)

# A coordinate or an array of them: Cloaker._cut maps both into its crop, and each keeps its type.
_Coord = TypeVar("_Coord", np.ndarray, float)


@dataclass
class FaceReport:
    box: tuple[float, float, float, float]
    size: float
    status: str  # "cloaked" or "too_small"
    similarity: dict[str, float] = field(default_factory=dict)  # member -> cosine to the original face, after
    thresholds: dict[str, float] = field(default_factory=dict)
    targets: dict[str, float] = field(default_factory=dict)  # member -> the similarity the preset's target asks for
    lpips: float | None = None
    steps: int = 0

    @property
    def protected_against(self) -> dict[str, bool]:
        return {n: s < self.thresholds[n] for n, s in self.similarity.items()}

    @property
    def below_target(self) -> list[str]:
        """Members that no longer match the face but see it short of the preset's target margin:
        the budget ran out before the attack got that far."""
        return [n for n, s in self.similarity.items() if self.thresholds[n] > s > self.targets.get(n, self.thresholds[n])]


@dataclass
class CloakResult:
    rgb: np.ndarray
    faces: list[FaceReport]
    seconds: float
    preset: str
    members: tuple[str, ...]  # the recognisers the attack ran against: a check by one of them is white-box

    @property
    def cloaked(self) -> int:
        return sum(f.status == "cloaked" for f in self.faces)

    @property
    def too_small(self) -> int:
        return sum(f.status == "too_small" for f in self.faces)


@dataclass
class _Crop:
    """Where one face's working crop sits in its photo."""

    image: int
    face: Face
    x0: int
    y0: int
    side: int  # in photo pixels
    pixels: torch.Tensor  # (3, C, C) float [0, 1]
    landmarks: torch.Tensor  # (5, 2) in crop pixels
    mask: torch.Tensor  # (1, C, C) where the perturbation may go
    region: torch.Tensor  # (4,) x1, y1, x2, y2: the face region, where its visibility is measured
    share: float = 1.0  # the share of the photo that the masks of all its faces cover


def _ellipse_mask(size: int, centre: tuple[float, float], axes: tuple[float, float], valid: tuple[float, ...]) -> torch.Tensor:
    """1 inside the face ellipse, feathered to 0 (smoothstep) so no seam shows; 0 on padding."""
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    r = torch.sqrt(((xs - centre[0]) / axes[0]) ** 2 + ((ys - centre[1]) / axes[1]) ** 2)
    t = ((1.15 - r) / 0.3).clamp(0, 1)
    mask = t * t * (3 - 2 * t)
    x_lo, y_lo, x_hi, y_hi = valid
    mask[(xs < x_lo) | (xs > x_hi) | (ys < y_lo) | (ys > y_hi)] = 0
    return mask[None]


class Cloaker:
    """Attacks every face of a photo on resident models; ``cloak(rgb)`` per photo or ``cloak_batch`` for a burst.

    ``preset`` is resolved (:func:`~lowkeyd.engine.presets.get_preset`). ``resident`` shares models
    already loaded; otherwise they are loaded onto ``device`` (``models`` names the ensemble, default
    every available recogniser; ``threads`` as :meth:`ResidentModels.load`).
    """

    def __init__(
        self,
        preset: Preset,
        device: str | None = None,
        *,
        models: Sequence[str] | None = None,
        threads: int | None = None,
        resident: ResidentModels | None = None,
        max_batch: int | None = None,
    ) -> None:
        self.resident = resident or ResidentModels.load(device, recognisers=models, threads=threads)
        self._use(preset)
        self.max_batch = max_batch or (16 if self.device.type == "cuda" else 4)

    @property
    def device(self) -> torch.device:
        return self.resident.device

    @property
    def models(self) -> tuple[FaceEmbedder, ...]:
        """The attack's ensemble."""
        return self.resident.recognisers

    def with_preset(self, preset: Preset) -> Cloaker:
        """A cloaker running ``preset`` on this one's resident models (nothing is loaded again)."""
        other = copy.copy(self)
        other._use(preset)
        return other

    def with_members(self, names: Sequence[str]) -> Cloaker:
        """A cloaker attacking with the resident recognisers ``names`` alone (a holdout fold's ensemble)."""
        other = copy.copy(self)
        other.resident = self.resident.only(names)
        other._use(self.preset)
        return other

    def _use(self, preset: Preset) -> None:
        self.preset = preset
        # Faces from DEFAULT_MIN_FACE up are found, and reported as too small under min_face_px.
        self.detector: FaceDetector = self.resident.detector_for(preset.min_face_px)
        self.attack = LowKey(self.models, self.resident.lpips, preset)

    @property
    def crop_size(self) -> int:
        return LowKey.crop_size(self.preset)

    def cloak(self, rgb: np.ndarray, *, luma_only: bool = False) -> CloakResult:
        return self.cloak_batch([rgb], luma_only=luma_only)[0]

    def cloak_batch(self, images: Sequence[np.ndarray], *, luma_only: bool = False) -> list[CloakResult]:
        """Cloak every face of every image; faces of all images share the model batches.

        ``luma_only`` changes brightness alone (R, G and B equally), for photos that
        will be stored as grayscale.
        """
        start = time.perf_counter()
        for rgb in images:
            if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
                raise EngineError(f"the engine takes (H, W, 3) uint8 RGB pixels, got {rgb.shape} {rgb.dtype}")
        crops: list[_Crop] = []
        attacked: list[FaceReport] = []  # the report of each crop's face, in crop order
        reports: list[list[FaceReport]] = []
        for i, rgb in enumerate(images):
            found = []
            for face in self.detector.detect(rgb):
                status = "cloaked" if face.size >= self.preset.min_face_px else "too_small"
                report = FaceReport(face.corners, face.size, status)
                found.append(report)
                if status == "cloaked":
                    crops.append(self._cut(i, rgb, face))
                    attacked.append(report)
            reports.append(found)
            # Native pixels each face's mask covers, summed per photo: the photo's PSNR bound is shared among them.
            mine = [c for c in crops if c.image == i]
            covered = sum(float(c.mask.sum()) * (c.side / c.mask.shape[-1]) ** 2 for c in mine)
            for c in mine:
                c.share = min(1.0, covered / (rgb.shape[0] * rgb.shape[1]))

        outputs = [rgb.copy() for rgb in images]
        thresholds = {m.name: m.threshold for m in self.models}
        targets = member_targets(self.models, self.preset.target)
        # Grayscale photos are written back as grayscale: only a luma change survives that.
        results = self._run(crops, luma_only)
        for crop, report, (adversarial, similarity, steps) in zip(crops, attacked, results, strict=True):
            scale, lp = self._fit_lpips(images[crop.image], crop, adversarial)
            if scale < 1:
                adversarial = crop.pixels + (adversarial - crop.pixels) * scale
                device = self.device
                moved = self.attack.similarity(crop.pixels.to(device), crop.landmarks.to(device), adversarial.to(device))
                similarity = {n: float(v[0]) for n, v in moved.items()}
            self._paste(outputs[crop.image], crop, adversarial)
            report.similarity, report.thresholds, report.targets = similarity, thresholds, targets
            report.lpips, report.steps = lp, steps
        seconds = time.perf_counter() - start
        return [
            CloakResult(output, found, seconds / len(images), self.preset.name, tuple(m.name for m in self.models))
            for output, found in zip(outputs, reports, strict=True)
        ]

    # -- crops --------------------------------------------------------------------------

    def _cut(self, index: int, rgb: np.ndarray, face: Face) -> _Crop:
        size = self.crop_size
        scale = min(1.0, self.preset.work_face_px / face.size)
        side = int(math.ceil(size / scale))
        cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
        x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
        h, w = rgb.shape[:2]
        # Edge-replicate where the crop runs off the photo; the mask keeps the attack off those pixels.
        ys = np.clip(np.arange(y0, y0 + side), 0, h - 1)
        xs = np.clip(np.arange(x0, x0 + side), 0, w - 1)
        pixels = torch.from_numpy(np.ascontiguousarray(rgb[ys][:, xs])).permute(2, 0, 1).float() / 255
        k = size / side
        if side != size:
            pixels = F.interpolate(pixels[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]

        def to_crop(x: _Coord, origin: int) -> _Coord:
            return (x - origin + 0.5) * k - 0.5  # pixel centres, as F.interpolate(align_corners=False)

        landmarks = np.stack([to_crop(face.landmarks[:, 0], x0), to_crop(face.landmarks[:, 1], y0)], 1)
        bw, bh = (face.box[2] - face.box[0]) * k, (face.box[3] - face.box[1]) * k
        valid = (to_crop(0, x0), to_crop(0, y0), to_crop(w - 1, x0), to_crop(h - 1, y0))
        mask = _ellipse_mask(size, (to_crop(cx, x0), to_crop(cy, y0)), (0.62 * bw, 0.68 * bh), valid)
        # The face box with the margin evaluate.FACE_MARGIN gives it: optimise what is measured.
        pad = FACE_MARGIN * face.size
        x1, y1, x2, y2 = face.box
        box = torch.tensor(
            [
                max(0, math.floor(to_crop(max(0, x1 - pad), x0))),
                max(0, math.floor(to_crop(max(0, y1 - pad), y0))),
                min(size, math.ceil(to_crop(min(w, x2 + pad), x0))),
                min(size, math.ceil(to_crop(min(h, y2 + pad), y0))),
            ]
        )
        return _Crop(index, face, x0, y0, side, pixels, torch.from_numpy(landmarks).float(), mask, box)

    @staticmethod
    def _native_change(crop: _Crop, adversarial: torch.Tensor) -> np.ndarray:
        """The crop's perturbation at the face's real size, ``(side, side, 3)`` in levels of 255."""
        delta = (adversarial - crop.pixels)[None]
        if crop.side != delta.shape[-1]:
            delta = F.interpolate(delta, size=(crop.side, crop.side), mode="bilinear", align_corners=False)
        return delta[0].permute(1, 2, 0).numpy() * 255

    @torch.no_grad()
    def _fit_lpips(self, rgb: np.ndarray, crop: _Crop, adversarial: torch.Tensor) -> tuple[float, float]:
        """The scale (at most 1) of the face's change that keeps its LPIPS within the budget, and that LPIPS.

        Measured where it is published: on the photo's own pixels, at full
        resolution, over the face region lowkeyd.engine.evaluate reports; a
        face the attack worked on downscaled shows its change differently there.
        """
        x1, y1, x2, y2 = crop.face.box
        pad = FACE_MARGIN * crop.face.size
        h, w = rgb.shape[:2]
        ya, yb = max(0, int(y1 - pad), crop.y0), min(h, math.ceil(y2 + pad), crop.y0 + crop.side)
        xa, xb = max(0, int(x1 - pad), crop.x0), min(w, math.ceil(x2 + pad), crop.x0 + crop.side)
        delta = self._native_change(crop, adversarial)[ya - crop.y0 : yb - crop.y0, xa - crop.x0 : xb - crop.x0]
        clean = rgb[ya:yb, xa:xb].astype(np.float32)
        before = torch.from_numpy(clean).permute(2, 0, 1)[None] / 127.5 - 1
        step = torch.from_numpy(delta).permute(2, 0, 1)[None] / 127.5

        def lpips_of(scale: torch.Tensor) -> torch.Tensor:
            after = (before + step * scale.view(-1, 1, 1, 1)).clamp(-1, 1)
            return phase_averaged_lpips(self.resident.lpips, after.to(self.device), before.to(self.device), stride=2).cpu()

        # A judge re-detects the face (a box a few pixels off) and averages every phase, not every other
        # one: fitted with that much room, the budget holds on its measure too (the tests check it).
        cap = 0.92 * LPIPS_PER_BUDGET * self.preset.budget
        scale = fit_scale(lpips_of, cap, torch.ones(1))
        return float(scale[0]), float(lpips_of(scale)[0])

    def _paste(self, out: np.ndarray, crop: _Crop, adversarial: torch.Tensor) -> None:
        """Add the crop's perturbation, upsampled to the face's real size, to the photo in place."""
        delta = self._native_change(crop, adversarial)
        h, w = out.shape[:2]
        ya, yb = max(0, crop.y0), min(h, crop.y0 + crop.side)
        xa, xb = max(0, crop.x0), min(w, crop.x0 + crop.side)
        d = delta[ya - crop.y0 : yb - crop.y0, xa - crop.x0 : xb - crop.x0]
        changed = d != 0  # bit-identical outside the mask, whatever rounding would do
        patch = out[ya:yb, xa:xb].astype(np.float32)
        patch = np.where(changed, np.clip(np.rint(patch + d), 0, 255), patch)
        out[ya:yb, xa:xb] = patch.astype(np.uint8)

    # -- batches ------------------------------------------------------------------------

    def _run(self, crops: list[_Crop], luma_only: bool) -> list[tuple[torch.Tensor, dict[str, float], int]]:
        results = []
        for start in range(0, len(crops), self.max_batch):
            results.extend(self._run_batch(crops[start : start + self.max_batch], luma_only))
        return results

    def _run_batch(self, crops: list[_Crop], luma_only: bool) -> list[tuple[torch.Tensor, dict[str, float], int]]:
        try:
            result = self.attack(
                torch.stack([c.pixels for c in crops]).to(self.device),
                torch.stack([c.landmarks for c in crops]).to(self.device),
                torch.stack([c.mask for c in crops]).to(self.device),
                torch.stack([c.region for c in crops]).to(self.device),
                shares=torch.tensor([c.share for c in crops], device=self.device),
                luma_only=luma_only,
            )
        except torch.OutOfMemoryError:
            if len(crops) == 1:
                raise EngineError("out of GPU memory even for a single face; try --device cpu") from None
            log.warning("out of GPU memory with %d faces at once; splitting the batch", len(crops))
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            half = len(crops) // 2
            return self._run_batch(crops[:half], luma_only) + self._run_batch(crops[half:], luma_only)
        adversarial = result.adversarial.float().cpu()
        return [
            (
                adversarial[i],
                {n: float(s[i]) for n, s in result.similarity.items()},
                int(result.steps[i]),
            )
            for i in range(len(crops))
        ]
