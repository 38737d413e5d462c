"""The LowKey attack (Cherepanova et al., ICLR 2021) on batches of face crops.

Maximise, over the perturbed crop x', for an ensemble of recognisers f_i::

    sum_i ( D_i(f_i(A(x)), f_i(A(x'))) + D_i(f_i(A(x)), f_i(A(G(x')))) ) / n  -  c * LPIPS(x, x')

with A the differentiable alignment onto each model's template, G a Gaussian
blur and D_i the squared distance of the unit embeddings (scaled per
:attr:`Preset.feature_scale`). The attack works on fixed-size crops around
each face (the engine cuts and puts them back); a blend mask per crop says
where the perturbation may live, so everything the models see is exactly what
will be published.
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
from lowkeyd.engine.perceptual import phase_averaged_lpips
from lowkeyd.engine.models.base import FaceEmbedder
from lowkeyd.engine.presets import Preset

# ITU-R BT.601 YCbCr -> RGB for differences (no offsets): chroma can be damped
# independently of luma, since colour blotches on skin are what people notice.
_YCBCR_TO_RGB = torch.tensor([[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]])


def gaussian_blur(x: torch.Tensor, kernel: int, sigma: float) -> torch.Tensor:
    """Depthwise Gaussian blur with reflected borders (G in LowKey's objective)."""
    r = torch.arange(kernel, dtype=x.dtype, device=x.device) - (kernel - 1) / 2
    k1 = torch.exp(-(r**2) / (2 * sigma**2))
    k1 = k1 / k1.sum()
    k2 = (k1[:, None] * k1[None, :]).expand(x.shape[1], 1, kernel, kernel)
    pad = kernel // 2
    return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="reflect"), k2, groups=x.shape[1])


def texture_weight(x: torch.Tensor, flat_weight: float, window: int = 7, texture_level: float = 0.03) -> torch.Tensor:
    """Where a change hides: 1 on texture (hair, brows, edges), ``flat_weight`` on flat areas such as skin.

    Local standard deviation of luma over ``window`` px, saturating at
    ``texture_level`` (a soft version of contrast masking in JPEG-era visibility models).
    """
    luma = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    mean = F.avg_pool2d(luma, window, 1, window // 2, count_include_pad=False)
    var = F.avg_pool2d(luma**2, window, 1, window // 2, count_include_pad=False) - mean**2
    texture = (var.clamp_min(0).sqrt() / texture_level).clamp(max=1.0)
    texture = F.avg_pool2d(texture, 5, 1, 2, count_include_pad=False)  # no hard mask edges
    return flat_weight + (1 - flat_weight) * texture


@dataclass
class AttackResult:
    adversarial: torch.Tensor  # (B, 3, H, W) in [0, 1]
    similarity: dict[str, torch.Tensor]  # model name -> (B,) cosine to the original, plain view, at the end
    lpips: torch.Tensor  # (B,) over each face region
    steps: torch.Tensor  # (B,) steps each face took


class LowKey:
    """``LowKey(models, lpips, preset)(crops, landmarks, masks, regions) -> AttackResult``.

    ``crops`` ``(B, 3, H, W)`` in ``[0, 1]``, ``landmarks`` ``(B, 5, 2)`` in crop
    pixels, ``masks`` ``(B, 1, H, W)`` in ``[0, 1]``: 0 where the crop must not
    change; ``regions`` ``(B, 4)`` integer ``x1, y1, x2, y2``: the face region
    whose LPIPS is kept small (computed on that region alone, as
    :mod:`lowkeyd.engine.evaluate` reports it).
    """

    def __init__(self, models: Sequence[FaceEmbedder], lpips: torch.nn.Module, preset: Preset) -> None:
        if not models:
            raise ValueError("the attack needs at least one recogniser")
        self.models = list(models)
        self.lpips = lpips
        self.preset = preset
        # Models sharing a template and input size share one warp per step.
        key = lambda m: (tuple(m.template.flatten().tolist()), tuple(m.input_size))  # noqa: E731
        self._groups = [list(g) for _, g in groupby(sorted(self.models, key=key), key=key)]

    # -- pieces of the objective ---------------------------------------------------------

    def _autocast(self, device: torch.device):
        p = self.preset.precision
        if p == "bf16" or (p == "auto" and device.type == "cuda"):
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _views(self, xp: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, float, bool]:
        """The images whose embeddings are compared (x' and G(x'), under a random rescale), the
        factor that makes their summed distances an unbiased estimate of the objective's, and
        whether the plain view (what is published) is among them."""
        p = self.preset
        use_plain = use_blur = True
        if p.blur_kernel and p.sample_views and generator is not None:
            use_plain = bool(torch.rand((), generator=generator, device=xp.device) < 0.5)
            use_blur = not use_plain
        views = [xp] if use_plain else []
        if p.blur_kernel and use_blur:
            views.append(gaussian_blur(xp, p.blur_kernel, p.blur_sigma))
        scale = (1 + bool(p.blur_kernel)) / len(views)
        out = torch.cat(views)
        if p.rescale_min < 1 and generator is not None:
            r = p.rescale_min + (1 - p.rescale_min) * torch.rand((), generator=generator, device=xp.device).item()
            size = [max(8, round(s * r)) for s in out.shape[-2:]]
            out = F.interpolate(out, size=size, mode="bilinear", antialias=True, align_corners=False)
            out = F.interpolate(out, size=xp.shape[-2:], mode="bilinear", align_corners=False)
        return out, scale, use_plain

    def _embeddings(
        self,
        images: torch.Tensor,
        landmarks: torch.Tensor,
        generator: torch.Generator | None,
        members: set[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per model (of ``members``, default all), ``(F, N, D)`` unit embeddings of ``images`` (N)
        with F = 2 if flipped copies are used."""
        n_views = images.shape[0] // landmarks.shape[0]
        lm = landmarks.repeat(n_views, 1, 1)
        jitter = None
        if self.preset.jitter_px and generator is not None:
            # Translation jitter in the normalised coordinates of a ~model-sized face.
            jitter = torch.zeros(images.shape[0], 2, 3, device=images.device)
            jitter[:, :, 2] = torch.randn(images.shape[0], 2, generator=generator, device=images.device) * (
                2 * self.preset.jitter_px / 112
            )
        out = {}
        for group in self._groups:
            group = [m for m in group if members is None or m.name in members]
            if not group:
                continue
            small, small_lm = self._prefilter(images, lm, group[0].template)
            aligned = warp_faces(small, small_lm, group[0].template, group[0].input_size, jitter)
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
        """Downscale (antialiased) to twice the model's face size before the bilinear warp.

        Warping a 300 px face straight onto a 112 px input samples one pixel in
        nine: the gradient, and so the perturbation, would sit on a sparse grid
        of pixels, visible as noise and fragile under resizing. An area-style
        downscale first spreads it over every pixel.
        """
        if not self.preset.prefilter:
            return images, landmarks
        eyes = (landmarks[:, 1] - landmarks[:, 0]).norm(dim=-1).max()
        factor = float(2 * (template[1] - template[0]).norm() / eyes)
        if factor >= 1:
            return images, landmarks
        size = [max(8, round(s * factor)) for s in images.shape[-2:]]
        small = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
        ky, kx = size[0] / images.shape[-2], size[1] / images.shape[-1]
        scaled = (landmarks + 0.5) * landmarks.new_tensor([kx, ky]) - 0.5
        return small, scaled

    def _feature_distance(self, emb: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """``(F, V*B, D)`` vs ``(F, B, D)`` -> ``(B,)``: squared distances, flips averaged, views summed."""
        batch = ref.shape[1]
        d2 = (emb - ref.repeat(1, emb.shape[1] // batch, 1)).pow(2).sum(-1)
        d2 = d2 / (emb.shape[-1] if self.preset.feature_scale == "per_dim" else 4.0)
        return d2.mean(0).view(-1, batch).sum(0)

    def _region_lpips(
        self, a: torch.Tensor, b: torch.Tensor, regions: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """``(B,)`` LPIPS of each face region alone (regions differ in size: one face at a time).

        With a generator, each call crops at a random phase of AlexNet's
        stride-4 grid: LPIPS of a fixed crop can be lowered by hiding the
        change in that grid, which no viewer's eye shares. Without one, the
        phase average :mod:`lowkeyd.engine.evaluate` reports, estimated from
        every other phase (4 crops instead of 16: it is only the face's report).
        """
        values = []
        for i, (x1, y1, x2, y2) in enumerate(regions.tolist()):
            fa, fb = a[i : i + 1, :, y1:y2, x1:x2] * 2 - 1, b[i : i + 1, :, y1:y2, x1:x2] * 2 - 1
            if generator is None:
                values.append(phase_averaged_lpips(self.lpips, fa, fb, stride=2)[0])
                continue
            dy, dx = torch.randint(0, 4, (2,), generator=generator, device=a.device).tolist()
            h, w = fa.shape[-2] - 3, fa.shape[-1] - 3
            values.append(self.lpips(fa[..., dy : dy + h, dx : dx + w], fb[..., dy : dy + h, dx : dx + w]).mean())
        return torch.stack(values)

    # -- the attack -----------------------------------------------------------------------

    def __call__(
        self, crops: torch.Tensor, landmarks: torch.Tensor, masks: torch.Tensor, regions: torch.Tensor
    ) -> AttackResult:
        p = self.preset
        device = crops.device
        batch = crops.shape[0]
        generator = torch.Generator(device=device)
        if p.seed is None:
            generator.seed()
        else:
            generator.manual_seed(p.seed)

        with torch.no_grad():
            reference = self._embeddings(crops, landmarks, None)
            weight = masks * (texture_weight(crops, p.flat_weight) if p.flat_weight < 1 else 1.0)
            if p.chroma_scale < 1:
                basis = _YCBCR_TO_RGB.to(device) * torch.tensor([1.0, p.chroma_scale, p.chroma_scale], device=device)
            else:
                basis = None
            thresholds = {m.name: m.threshold for m in self.models}
            area = masks.sum((1, 2, 3), keepdim=True).clamp_min(1) * crops.shape[1]

        def perturbed(param: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            delta = param if basis is None else torch.einsum("ij,bjhw->bihw", basis, param)
            return (x + w * delta).clamp(0, 1)

        init = torch.rand(crops.shape, generator=generator, device=device) * 2 - 1
        param = (init * p.init_noise).requires_grad_(p.steps > 0)
        velocity = torch.zeros_like(crops)
        steps = torch.zeros(batch, dtype=torch.long, device=device)
        active = torch.ones(batch, dtype=torch.bool, device=device)
        past = {m.name: torch.zeros(batch, dtype=torch.bool, device=device) for m in self.models}

        for step in range(p.steps):
            idx = active.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            x, lm, w = crops[idx], landmarks[idx], weight[idx]
            sub = param.detach()[idx].requires_grad_()
            xp = perturbed(sub, x, w)
            views, view_scale, has_plain = self._views(xp, generator)
            members = None
            if p.focus_members and not has_plain:
                # A member that was past its target for every face at its last look adds
                # nothing to this step; the published view's steps look at every member again.
                members = {n for n, v in past.items() if not v[idx].all()} or None
            emb = self._embeddings(views, lm, generator, members)
            with torch.no_grad():
                # Per member and face: is every view (and flip) already past the member's target?
                for name, e in emb.items():
                    cos = (e * reference[name][:, idx].repeat(1, e.shape[1] // idx.numel(), 1)).sum(-1)
                    past[name][idx] = cos.view(-1, idx.numel()).amax(0) <= thresholds[name] - (p.target_margin or 0)
            terms = []
            for name, e in emb.items():
                distance = self._feature_distance(e, reference[name][:, idx])
                # Focus: a member already past its target gets no more of the step; the
                # budget goes to the members still behind (and to LPIPS once none is).
                terms.append(distance * ~past[name][idx] if p.focus_members else distance)
            feature = view_scale * sum(terms) / len(self.models)
            perceptual = self._region_lpips(xp, x, regions[idx], generator) if p.lpips_weight else 0
            objective = feature - p.lpips_weight * perceptual
            (grad,) = torch.autograd.grad(objective.sum(), sub)

            with torch.no_grad():
                if p.target_margin is not None and step >= p.min_steps and has_plain:
                    # Faces whose every member (and view, the published one included) is already
                    # far enough are done; they keep the perturbation that got them there.
                    done = torch.stack([v[idx] for v in past.values()]).all(0)
                    active[idx[done]] = False
                    keep = ~done
                    idx, grad = idx[keep], grad[keep]
                    if idx.numel() == 0:
                        break
                if p.step_rule == "sign":
                    direction = grad.sign()
                else:
                    # RMS over the face's own pixels, not the crop: how much of the crop a
                    # face fills must not change how far each of its pixels moves.
                    rms = (grad.pow(2).sum((1, 2, 3), keepdim=True) / area[idx]).sqrt().clamp_min(1e-12)
                    direction = grad / rms
                velocity[idx] = p.momentum * velocity[idx] + direction
                param.data[idx] += p.step_size * velocity[idx]
                steps[idx] += 1

        with torch.no_grad():
            adversarial = perturbed(param.detach(), crops, weight)
            final = self._embeddings(adversarial, landmarks, None)
            similarity = {n: (e[0] * reference[n][0]).sum(-1) for n, e in final.items()}
            lp = self._region_lpips(adversarial, crops, regions, None)
        return AttackResult(adversarial, similarity, lp, steps)

    @staticmethod
    def crop_size(preset: Preset) -> int:
        """Side of the square working crop: the face box plus room for the templates' margins."""
        return int(math.ceil(preset.work_face_px * 1.6 / 8) * 8)
