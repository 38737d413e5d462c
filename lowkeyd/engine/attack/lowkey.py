"""The LowKey attack (Cherepanova et al., ICLR 2021) on batches of face crops, inside a visibility budget.

Maximise, over the perturbed crop x', for an ensemble of recognisers f_i::

    sum_i ( D_i(f_i(A(x)), f_i(A(x'))) + D_i(f_i(A(x)), f_i(A(G(x')))) ) / n  -  c * LPIPS(x, x')

with A the differentiable alignment onto each model's template, G a Gaussian
blur and D_i the squared distance of the unit embeddings; every step is
projected back into the face's budget (:mod:`.budget`), and the face stops
once every member sees it past its target (:mod:`.stop`). The attack works on
fixed-size crops around each face (the engine cuts and puts them back); the
budget's limit is zero outside each face's mask, so everything the models see
is exactly what will be published.

The parts, one technique each: :mod:`.objective` (the terms), :mod:`.views`
(what each step shows the members), :mod:`.steps` (gradient to step),
:mod:`.budget` and :mod:`.masks` (how far, and where), :mod:`.stop` (when).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby

import torch
import torch.nn.functional as F

from lowkeyd.engine.align import warp_faces
from lowkeyd.engine.attack.budget import FaceBudget
from lowkeyd.engine.attack.masks import feature_guard
from lowkeyd.engine.attack.objective import FeatureDistance, Look, LpipsPenalty
from lowkeyd.engine.attack.steps import StepRule
from lowkeyd.engine.attack.stop import StopRule
from lowkeyd.engine.attack.views import ViewSampler
from lowkeyd.engine.models.base import FaceEmbedder
from lowkeyd.engine.presets import Preset


@dataclass
class AttackResult:
    adversarial: torch.Tensor  # (B, 3, H, W) in [0, 1]
    similarity: dict[str, torch.Tensor]  # model name -> (B,) cosine to the original, plain view, at the end
    steps: torch.Tensor  # (B,) steps each face took


class LowKey:
    """``LowKey(models, lpips, preset)(crops, landmarks, masks, regions) -> AttackResult``.

    ``crops`` ``(B, 3, H, W)`` in ``[0, 1]``, ``landmarks`` ``(B, 5, 2)`` in crop
    pixels, ``masks`` ``(B, 1, H, W)`` in ``[0, 1]``: 0 where the crop must not
    change; ``regions`` ``(B, 4)`` integer ``x1, y1, x2, y2``: the face region
    whose LPIPS the budget bounds (computed on that region alone, as
    :mod:`lowkeyd.engine.evaluate` reports it). ``shares`` ``(B,)``: the share of
    its photo that all faces of that photo cover, which sets how much of the
    photo's PSNR bound each face may spend (None: each face fills its photo).
    ``luma_only`` changes brightness alone, for photos that will be stored as grayscale.
    """

    def __init__(self, models: Sequence[FaceEmbedder], lpips: torch.nn.Module, preset: Preset) -> None:
        if not models:
            raise ValueError("the attack needs at least one recogniser")
        self.models = list(models)
        self.lpips = lpips
        self.preset = preset
        self.views = ViewSampler(preset)
        self.step_rule = StepRule(preset)
        self.feature = FeatureDistance(preset, len(self.models))
        self.penalty = LpipsPenalty(lpips, preset.lpips_weight)
        # Models sharing a template and input size share one warp per step.
        key = lambda m: (tuple(m.template.flatten().tolist()), tuple(m.input_size))  # noqa: E731
        self._groups = [list(g) for _, g in groupby(sorted(self.models, key=key), key=key)]

    def __call__(
        self,
        crops: torch.Tensor,
        landmarks: torch.Tensor,
        masks: torch.Tensor,
        regions: torch.Tensor,
        *,
        shares: torch.Tensor | None = None,
        luma_only: bool = False,
    ) -> AttackResult:
        p = self.preset
        generator = torch.Generator(device=crops.device)
        if p.seed is None:
            generator.seed()
        else:
            generator.manual_seed(p.seed)
        guard = feature_guard(landmarks, (crops.shape[-2], crops.shape[-1]), p.feature_guard)
        budget = FaceBudget.for_faces(crops, masks, guard, p.budget, 0.0 if luma_only else p.chroma_scale, shares)
        n = crops.shape[0]
        reference = self._embeddings(crops, landmarks)
        stop = StopRule(self.models, p, n, crops.device)
        # At x' = x the feature and LPIPS terms have zero gradient: start from a little noise.
        delta = (torch.rand(crops.shape, generator=generator, device=crops.device) * 2 - 1) * p.init_noise
        budget.project(delta)
        steps = torch.zeros(n, dtype=torch.long, device=crops.device)
        active = torch.ones(n, dtype=torch.bool, device=crops.device)
        for step in range(p.steps):
            idx = active.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            look, grad = self._gradient(crops, landmarks, regions, reference, budget, stop, delta, idx, generator)
            if look:
                done = stop.done(idx, step)
                active[idx[done]] = False
                idx, grad = idx[~done], grad[~done]
                if idx.numel() == 0:
                    continue
            change = self.step_rule(budget.precondition(grad, idx), budget.area[idx])
            delta[idx] = budget.project(delta[idx] + change, idx)
            steps[idx] += 1
        adversarial = (crops + budget.change(delta)).clamp(0, 1)
        # The face's LPIPS is measured, and bounded, by the engine on the published pixels, not here.
        return AttackResult(adversarial, self.similarity(crops, landmarks, adversarial, reference), steps)

    # -- one step ---------------------------------------------------------------------------

    def _gradient(
        self,
        crops: torch.Tensor,
        landmarks: torch.Tensor,
        regions: torch.Tensor,
        reference: dict[str, torch.Tensor],
        budget: FaceBudget,
        stop: StopRule,
        delta: torch.Tensor,
        idx: torch.Tensor,
        generator: torch.Generator,
    ) -> tuple[bool, torch.Tensor]:
        """Whether this step's view was the published one, and the objective's gradient for faces ``idx``."""
        x = crops[idx]
        sub = delta[idx].requires_grad_()
        xp = (x + budget.change(sub)).clamp(0, 1)
        views, view_scale, plain_seen = self.views(xp, generator)
        members = None
        if self.preset.focus_members and not plain_seen:
            # A member past its target for every face at its last look adds nothing to this step;
            # the published view's steps look at every member again.
            members = {n for n, v in stop.past.items() if not v[idx].all()} or None
        emb = self._embeddings(views, landmarks[idx], members)
        ref = {name: reference[name][:, idx] for name in emb}
        with torch.no_grad():
            for name, e in emb.items():
                cos = (e * ref[name].repeat(1, e.shape[1] // idx.numel(), 1)).sum(-1).view(-1, idx.numel()).amax(0)
                stop.look(name, idx, cos, plain_seen)
        look = Look(x, xp, regions[idx], emb, ref, {name: stop.pulling(name, idx) for name in emb}, generator)
        objective = view_scale * self.feature(look)
        if self.preset.lpips_weight:
            objective = objective - self.penalty(look)
        (grad,) = torch.autograd.grad(objective.sum(), sub)
        return plain_seen, grad

    # -- the end ----------------------------------------------------------------------------

    @torch.no_grad()
    def similarity(
        self,
        crops: torch.Tensor,
        landmarks: torch.Tensor,
        adversarial: torch.Tensor,
        reference: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Each member's ``(B,)`` cosine between the clean and the perturbed faces, plain view
        (``(3, H, W)`` crops and ``(5, 2)`` landmarks are taken as a batch of one)."""
        if crops.dim() == 3:
            crops, landmarks, adversarial = crops[None], landmarks[None], adversarial[None]
        if reference is None:
            reference = self._embeddings(crops, landmarks)
        final = self._embeddings(adversarial, landmarks)
        return {n: (e[0] * reference[n][0]).sum(-1) for n, e in final.items()}

    # -- what the members see -----------------------------------------------------------------

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        p = self.preset.precision
        if p == "bf16" or (p == "auto" and device.type == "cuda"):
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _embeddings(
        self,
        images: torch.Tensor,
        landmarks: torch.Tensor,
        members: set[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per model (of ``members``, default all), ``(F, N, D)`` unit embeddings of ``images`` (N)
        with F = 2 if flipped copies are used."""
        n_views = images.shape[0] // landmarks.shape[0]
        lm = landmarks.repeat(n_views, 1, 1)
        out = {}
        for group in self._groups:
            group = [m for m in group if members is None or m.name in members]
            if not group:
                continue
            small, small_lm = self._prefilter(images, lm, group[0].template)
            aligned = warp_faces(small, small_lm, group[0].template, group[0].input_size)
            if self.preset.flip:
                aligned = torch.cat([aligned, aligned.flip(-1)])
            with self._autocast(images.device):
                for model in group:
                    emb = model(aligned).float()
                    out[model.name] = F.normalize(emb, dim=-1).view(1 + self.preset.flip, images.shape[0], -1)
        return out

    def _prefilter(
        self, images: torch.Tensor, landmarks: torch.Tensor, template: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Downscale (antialiased) to the model's own face size before the bilinear warp.

        A bilinear warp that shrinks samples the input on a lattice: at 2:1 the
        gradient lands on every other pixel with weights that beat against the
        pixel grid, and the perturbation carries that lattice as stripes and a
        fine grid. Downscaling with antialiasing to the template's scale first
        leaves the warp a near 1:1 resampling, whose gradient covers every pixel
        evenly.
        """
        if not self.preset.prefilter:
            return images, landmarks
        eyes = (landmarks[:, 1] - landmarks[:, 0]).norm(dim=-1).max()
        factor = float((template[1] - template[0]).norm() / eyes)
        if factor >= 1:
            return images, landmarks
        size = [max(8, round(s * factor)) for s in images.shape[-2:]]
        small = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
        ky, kx = size[0] / images.shape[-2], size[1] / images.shape[-1]
        scaled = (landmarks + 0.5) * landmarks.new_tensor([kx, ky]) - 0.5
        return small, scaled

    @staticmethod
    def crop_size(preset: Preset) -> int:
        """Side of the square working crop: the face box plus room for the templates' margins."""
        return int(math.ceil(preset.work_face_px * 1.6 / 8) * 8)
