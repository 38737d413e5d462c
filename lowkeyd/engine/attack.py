"""The LowKey attack (Cherepanova et al., ICLR 2021) on batches of face crops.

Maximise, over the perturbed crop x', for an ensemble of recognisers f_i::

    sum_i ( D_i(f_i(A(x)), f_i(A(x'))) + D_i(f_i(A(x)), f_i(A(G(x')))) ) / n  -  c * LPIPS(x, x')

with A the differentiable alignment onto each model's template, G a Gaussian
blur and D_i the squared distance of the unit embeddings (scaled per
:attr:`Preset.feature_scale`). The attack works on fixed-size crops around
each face (the engine cuts and puts them back); a blend mask per crop says
where the perturbation may live, so everything the models see is exactly what
will be published.

For transfer to recognisers outside the ensemble the objective is taken in
expectation over input diversity (random view, rescale and small affine
misalignment, a differentiable JPEG round trip: DI, Xie et al. 2019), over
thinned members (feature-map dropout, :mod:`lowkeyd.engine.surrogate`),
optionally with an intermediate-feature term, and the step is smoothed
(translation invariance, Dong et al. 2019) and accumulated with momentum (MI,
Dong et al. 2018).
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
from lowkeyd.engine.decoys import Decoy
from lowkeyd.engine.jpeg_approx import YCBCR_TO_RGB, jpeg_round_trip
from lowkeyd.engine.models.base import FaceEmbedder
from lowkeyd.engine.perceptual import phase_averaged_lpips
from lowkeyd.engine.presets import Preset
from lowkeyd.engine.surrogate import Surrogates

# Shading is the scale of an eye socket or a cheek's fold: change at that scale
# reads as darker brows, deeper lines, make-up. As a Gaussian's sigma, in eye
# distances.
SHADING_SIGMA = 1 / 8


def gaussian_blur(x: torch.Tensor, kernel: int, sigma: float) -> torch.Tensor:
    """Depthwise Gaussian blur with reflected borders (G in LowKey's objective)."""
    k1 = _gaussian_kernel(kernel // 2, sigma, x)
    k2 = (k1[:, None] * k1[None, :]).expand(x.shape[1], 1, kernel, kernel)
    pad = kernel // 2
    return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="reflect"), k2, groups=x.shape[1])


def _gaussian_kernel(radius: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    """``(2 * radius + 1,)`` normalised 1-D Gaussian, of ``like``'s dtype and device."""
    r = torch.arange(-radius, radius + 1, dtype=like.dtype, device=like.device)
    k = torch.exp(-(r**2) / (2 * sigma**2))
    return k / k.sum()


def remove_shading(step: torch.Tensor, eye_distance: torch.Tensor, keep: float, ycbcr: bool) -> torch.Tensor:
    """``step`` (B, 3, H, W) with its luma's shading-scale part scaled to ``keep``.

    The shading part is the luma blurred by a Gaussian of :data:`SHADING_SIGMA`
    eye distances (``eye_distance`` (B,) in pixels); what is left is texture
    finer than that. ``ycbcr``: the step's channels are Y, Cb, Cr (else RGB,
    where adding the same amount to all three changes luma alone).
    """
    luma = step[:, :1] if ycbcr else _luma(step)
    shading = torch.cat([_separable_blur(luma[i : i + 1], float(d) * SHADING_SIGMA) for i, d in enumerate(eye_distance)])
    correction = (1 - keep) * shading
    if ycbcr:
        return torch.cat([step[:, :1] - correction, step[:, 1:]], 1)
    return step - correction


def _luma(x: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)`` BT.601 luma of RGB ``x``."""
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def _separable_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of ``(1, 1, H, W)`` as two 1-D passes: shading-scale kernels are too wide for a 2-D one."""
    radius = min(int(3 * sigma), min(x.shape[-2:]) - 1)
    k = _gaussian_kernel(radius, sigma, x)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1))


def texture_weight(x: torch.Tensor, flat_weight: float, window: int = 7, texture_level: float = 0.03) -> torch.Tensor:
    """Where a change hides: 1 on texture (hair, brows, edges), ``flat_weight`` on flat areas such as skin.

    Local standard deviation of luma over ``window`` px, saturating at
    ``texture_level`` (a soft version of contrast masking in JPEG-era visibility models).
    """
    luma = _luma(x)
    mean = F.avg_pool2d(luma, window, 1, window // 2, count_include_pad=False)
    var = F.avg_pool2d(luma**2, window, 1, window // 2, count_include_pad=False) - mean**2
    texture = (var.clamp_min(0).sqrt() / texture_level).clamp(max=1.0)
    texture = F.avg_pool2d(texture, 5, 1, 2, count_include_pad=False)  # no hard mask edges
    return flat_weight + (1 - flat_weight) * texture


def feature_guard(landmarks: torch.Tensor, size: tuple[int, int], weight: float) -> torch.Tensor:
    """``(B, 1, H, W)``: ``weight`` over the eyes, brows and nose bridge, 1 elsewhere, soft-edged.

    Those are the features people read a face by, and high-contrast texture, so a
    texture mask alone sends the change straight to them: darker brows and eye
    creases are the first thing someone who knows the face notices. Each eye's
    ellipse reaches up over its brow; one more covers the bridge between them.
    """
    left, right = landmarks[:, 0], landmarks[:, 1]
    d = (right - left).norm(dim=-1).clamp_min(1.0)
    eye_line = right - left
    lift = torch.stack([eye_line[:, 1], -eye_line[:, 0]], -1)  # one eye distance towards the brows (-y)
    ellipses = ((left + 0.2 * lift, 0.36, 0.42), (right + 0.2 * lift, 0.36, 0.42), ((left + right) / 2 - 0.05 * lift, 0.16, 0.34))
    return (1 - (1 - weight) * _ellipse_cover(size, ellipses, d))[:, None]


def eye_spots(landmarks: torch.Tensor, size: tuple[int, int], weight: float) -> torch.Tensor:
    """``(B, 1, H, W)``: ``weight`` over each eye's opening (iris and white), 1 elsewhere, soft-edged."""
    left, right = landmarks[:, 0], landmarks[:, 1]
    d = (right - left).norm(dim=-1).clamp_min(1.0)
    return (1 - (1 - weight) * _ellipse_cover(size, ((left, 0.22, 0.15), (right, 0.22, 0.15)), d))[:, None]


def _ellipse_cover(size: tuple[int, int], ellipses: Sequence[tuple[torch.Tensor, float, float]], d: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)``: 1 inside any of ``ellipses`` (centre ``(B, 2)``, half-axes in eye distances ``d`` ``(B,)``),
    0 well outside, a smooth step between."""
    h, w = size
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=d.device),
        torch.arange(w, dtype=torch.float32, device=d.device),
        indexing="ij",
    )
    d = d[:, None, None]
    cover = torch.zeros(d.shape[0], h, w, device=d.device)
    for centre, ax, ay in ellipses:
        # Axis-aligned ellipses are enough: the roll of a face the attack keeps is small.
        r = ((xs - centre[:, 0, None, None]) / (ax * d)) ** 2 + ((ys - centre[:, 1, None, None]) / (ay * d)) ** 2
        t = ((1.3 - r.sqrt()) / 0.5).clamp(0, 1)
        cover = torch.maximum(cover, t * t * (3 - 2 * t))
    return cover


@dataclass
class AttackResult:
    adversarial: torch.Tensor  # (B, 3, H, W) in [0, 1]
    similarity: dict[str, torch.Tensor]  # model name -> (B,) cosine to the original, plain view, at the end
    lpips: torch.Tensor  # (B,) over each face region
    steps: torch.Tensor  # (B,) steps each face took


@dataclass
class _Batch:
    """What stays fixed for one batch of faces while the attack runs."""

    crops: torch.Tensor
    landmarks: torch.Tensor
    regions: torch.Tensor
    weight: torch.Tensor  # where and how much each pixel may change
    area: torch.Tensor  # (B, 1, 1, 1): pixels x channels the face may change
    reference: dict[str, torch.Tensor]  # model -> (F, B, D) clean embeddings
    taps: dict[str, torch.Tensor]  # model -> (F*B, C) clean intermediate features
    decoys: dict[str, torch.Tensor]  # model -> (B, D) embedding of each face's decoy (empty: untargeted)
    chroma: torch.Tensor | None = None  # (B, 1, H, W): chroma change allowed per pixel, relative (None: everywhere)


@dataclass
class _State:
    """What the attack moves: the perturbation and the bookkeeping of who is done."""

    param: torch.Tensor
    velocity: torch.Tensor
    steps: torch.Tensor  # (B,) steps taken per face
    active: torch.Tensor  # (B,) still being attacked
    past: dict[str, torch.Tensor]  # model -> (B,) past its target at its last look
    expected: dict[str, torch.Tensor]  # model -> (B,) running estimate of its cosine on the published view (NaN: none yet)


class LowKey:
    """``LowKey(models, lpips, preset)(crops, landmarks, masks, regions) -> AttackResult``.

    ``crops`` ``(B, 3, H, W)`` in ``[0, 1]``, ``landmarks`` ``(B, 5, 2)`` in crop
    pixels, ``masks`` ``(B, 1, H, W)`` in ``[0, 1]``: 0 where the crop must not
    change; ``regions`` ``(B, 4)`` integer ``x1, y1, x2, y2``: the face region
    whose LPIPS is kept small (computed on that region alone, as
    :mod:`lowkeyd.engine.evaluate` reports it). ``decoys``: the identities a
    targeted push (``preset.decoy_weight``) may steer faces towards.
    """

    def __init__(
        self, models: Sequence[FaceEmbedder], lpips: torch.nn.Module, preset: Preset, decoys: Sequence[Decoy] = ()
    ) -> None:
        if not models:
            raise ValueError("the attack needs at least one recogniser")
        if preset.decoy_weight and not decoys:
            raise ValueError("a targeted push (decoy_weight) needs decoy identities")
        self.decoys = list(decoys) if preset.decoy_weight else []
        self._decoy_embeddings: dict[str, torch.Tensor] | None = None
        self.models = list(models)
        self.lpips = lpips
        self.preset = preset
        self._ycbcr = preset.chroma_scale < 1 or preset.eye_chroma < 1
        self.surrogates = Surrogates(self.models, preset.dropout, preset.tap_depth if preset.tap_weight else None)
        # Models sharing a template and input size share one warp per step.
        key = lambda m: (tuple(m.template.flatten().tolist()), tuple(m.input_size))  # noqa: E731
        self._groups = [list(g) for _, g in groupby(sorted(self.models, key=key), key=key)]
        # Each member's target on its own scale: ``target`` of the way from its threshold to a stranger.
        self._targets = {m.name: m.threshold - (preset.target or 0) * (m.threshold - m.stranger) for m in self.models}

    def __call__(
        self, crops: torch.Tensor, landmarks: torch.Tensor, masks: torch.Tensor, regions: torch.Tensor
    ) -> AttackResult:
        generator = torch.Generator(device=crops.device)
        if self.preset.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.preset.seed)
        with self.surrogates.attached(generator):
            batch = self._prepare(crops, landmarks, masks, regions)
            state = self._start(batch, generator)
            for step in range(self.preset.steps):
                idx = state.active.nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                grad, plain_seen = self._gradient(batch, state, idx, generator)
                if self.preset.target is not None and step >= self.preset.min_steps and plain_seen:
                    idx, grad = self._retire_done(state, idx, grad)
                self._step(batch, state, idx, grad)
        return self._finish(batch, state)

    # -- start and finish --------------------------------------------------------------------

    @torch.no_grad()
    def _prepare(self, crops: torch.Tensor, landmarks: torch.Tensor, masks: torch.Tensor, regions: torch.Tensor) -> _Batch:
        p = self.preset
        weight = masks
        if p.flat_weight < 1:
            weight = weight * texture_weight(crops, p.flat_weight)
        if p.eye_weight < 1:
            weight = weight * feature_guard(landmarks, tuple(crops.shape[-2:]), p.eye_weight)
        chroma = eye_spots(landmarks, tuple(crops.shape[-2:]), p.eye_chroma) if p.eye_chroma < 1 else None
        reference = self._embeddings(crops, landmarks, None)
        taps = dict(self.surrogates.taps)
        area = masks.sum((1, 2, 3), keepdim=True).clamp_min(1) * crops.shape[1]
        return _Batch(crops, landmarks, regions, weight, area, reference, taps, self._pick_decoys(reference), chroma)

    def _pick_decoys(self, reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per member, ``(B, D)``: the embedding of the decoy the members find least like each face."""
        if not self.decoys:
            return {}
        if self._decoy_embeddings is None:
            per_decoy = [self._embeddings(d.image, d.landmarks, None) for d in self.decoys]
            self._decoy_embeddings = {m.name: torch.cat([e[m.name][0] for e in per_decoy]) for m in self.models}
        likeness = sum(reference[n][0] @ e.T for n, e in self._decoy_embeddings.items())  # (B, K)
        choice = likeness.argmin(1)
        return {n: e[choice] for n, e in self._decoy_embeddings.items()}

    def _start(self, batch: _Batch, generator: torch.Generator) -> _State:
        p, n = self.preset, batch.crops.shape[0]
        # At x' = x the feature and LPIPS terms have zero gradient: start from a little noise.
        init = torch.rand(batch.crops.shape, generator=generator, device=batch.crops.device) * 2 - 1
        zeros = torch.zeros(n, dtype=torch.bool, device=batch.crops.device)
        return _State(
            param=init * p.init_noise,
            velocity=torch.zeros_like(batch.crops),
            steps=torch.zeros(n, dtype=torch.long, device=batch.crops.device),
            active=~zeros,
            past={m.name: zeros.clone() for m in self.models},
            expected={m.name: torch.full((n,), math.nan, device=batch.crops.device) for m in self.models},
        )

    @torch.no_grad()
    def _finish(self, batch: _Batch, state: _State) -> AttackResult:
        adversarial = self._perturbed(state.param, batch.crops, batch.weight, batch.chroma)
        final = self._embeddings(adversarial, batch.landmarks, None)
        similarity = {n: (e[0] * batch.reference[n][0]).sum(-1) for n, e in final.items()}
        lp = self._region_lpips(adversarial, batch.crops, batch.regions, None)
        return AttackResult(adversarial, similarity, lp, state.steps)

    # -- one step ---------------------------------------------------------------------------

    def _gradient(
        self, batch: _Batch, state: _State, idx: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, bool]:
        """The objective's gradient for faces ``idx`` on one random view, and whether that view was the published one."""
        p = self.preset
        x = batch.crops[idx]
        sub = state.param[idx].requires_grad_()
        chroma = None if batch.chroma is None else batch.chroma[idx]
        xp = self._perturbed(sub, x, batch.weight[idx], chroma)
        views, view_scale, plain_seen = self._views(xp, generator)
        members = None
        if p.focus_members and not plain_seen:
            # A member past its target for every face at its last look adds nothing to this step;
            # the published view's steps look at every member again.
            members = {n for n, v in state.past.items() if not v[idx].all()} or None
        self.surrogates.drop = True
        try:
            emb = self._embeddings(views, batch.landmarks[idx], generator, members)
        finally:
            self.surrogates.drop = False
        feature = view_scale * self._pull(batch, state, idx, emb, plain_seen)
        objective = feature
        if p.lpips_weight:
            objective = objective - p.lpips_weight * self._region_lpips(xp, x, batch.regions[idx], generator)
        (grad,) = torch.autograd.grad(objective.sum(), sub)
        return grad, plain_seen

    def _pull(
        self, batch: _Batch, state: _State, idx: torch.Tensor, emb: dict[str, torch.Tensor], plain_seen: bool
    ) -> torch.Tensor:
        """``(b,)`` the ensemble's feature term; updates which members are past their target and,
        on the published view, the running estimate the stop is decided on."""
        p = self.preset
        terms = []
        for name, e in emb.items():
            ref = batch.reference[name][:, idx]
            with torch.no_grad():
                cos = (e * ref.repeat(1, e.shape[1] // idx.numel(), 1)).sum(-1).view(-1, idx.numel()).amax(0)
                state.past[name][idx] = cos <= self._targets[name]
                if plain_seen:
                    # One look is one random misalignment, rescale and thinning: deciding the stop on
                    # it waits for every member to be lucky at once (a face past its target on
                    # average took 60 steps instead of 24); an average over looks does not.
                    old = state.expected[name][idx]
                    state.expected[name][idx] = torch.where(old.isnan(), cos, old + p.stop_smoothing * (cos - old))
            distance = self._feature_distance(e, ref)
            if name in batch.decoys:
                distance = distance + p.decoy_weight * self._likeness(e, batch.decoys[name][idx])
            if name in self.surrogates.taps:
                distance = distance + p.tap_weight * self._tap_distance(self.surrogates.taps[name], batch.taps[name], idx)
            # Focus: a member already past its target gets no more of the step; the budget
            # goes to the members still behind (and to LPIPS once none is).
            terms.append(distance * ~state.past[name][idx] if p.focus_members else distance)
        return sum(terms) / len(self.models)

    def _retire_done(self, state: _State, idx: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Faces whose every member sees the published view past its target (on the running estimate)
        stop here; they keep the perturbation that got them there."""
        done = torch.stack([state.expected[n][idx] <= self._targets[n] for n in state.expected]).all(0)
        state.active[idx[done]] = False
        return idx[~done], grad[~done]

    @torch.no_grad()
    def _step(self, batch: _Batch, state: _State, idx: torch.Tensor, grad: torch.Tensor) -> None:
        p = self.preset
        if idx.numel() == 0:
            return
        if p.ti_kernel:
            # Translation invariance: the step for every small shift of the face at once.
            grad = gaussian_blur(grad, p.ti_kernel, p.ti_kernel / 4)
        if p.shading < 1:
            # Band-limited from above too: the perturbation is a sum of steps, so its
            # shading is kept to the same share.
            eyes = (batch.landmarks[idx, 1] - batch.landmarks[idx, 0]).norm(dim=-1).clamp_min(8.0)
            grad = remove_shading(grad, eyes, p.shading, ycbcr=self._ycbcr)
        if p.step_rule == "sign":
            direction = grad.sign()
        else:
            # RMS over the face's own pixels, not the crop: how much of the crop a
            # face fills must not change how far each of its pixels moves.
            rms = (grad.pow(2).sum((1, 2, 3), keepdim=True) / batch.area[idx]).sqrt().clamp_min(1e-12)
            direction = grad / rms
        state.velocity[idx] = p.momentum * state.velocity[idx] + direction
        state.param[idx] += p.step_size * state.velocity[idx]
        state.steps[idx] += 1

    # -- pieces of the objective ---------------------------------------------------------------

    def _perturbed(
        self, param: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, chroma: torch.Tensor | None
    ) -> torch.Tensor:
        if self._ycbcr:
            # The perturbation lives in YCbCr: chroma can be damped independently of luma,
            # since colour blotches on skin (and a tinted iris) are what people notice.
            if chroma is not None:
                param = torch.cat([param[:, :1], param[:, 1:] * chroma], 1)
            scale = torch.tensor([1.0, self.preset.chroma_scale, self.preset.chroma_scale], device=x.device)
            param = torch.einsum("ij,bjhw->bihw", YCBCR_TO_RGB.to(x.device) * scale, param)
        change = weight * param
        if self.preset.max_change is not None:
            # A capped pixel passes no gradient: the next steps spread the change to the others.
            change = change.clamp(-self.preset.max_change, self.preset.max_change)
        return (x + change).clamp(0, 1)

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
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
        if p.jpeg_views and generator is not None and torch.rand((), generator=generator, device=xp.device) < p.jpeg_views:
            quality = int(torch.randint(70, 96, (), generator=generator, device=xp.device))
            out = jpeg_round_trip(out, quality)
        return out, scale, use_plain

    def _jitter(self, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor | None:
        """``(n, 2, 3)`` random small affine maps (shift, rotation, scale) in aligned-face coordinates."""
        p = self.preset
        if generator is None or not (p.jitter_px or p.jitter_deg or p.jitter_scale):
            return None
        noise = torch.randn(n, 4, generator=generator, device=device)
        angle = noise[:, 0] * math.radians(p.jitter_deg)
        scale = 1 + noise[:, 1] * p.jitter_scale
        # Shifts in px of a ~112 px model input, as 2 px / size in normalised units.
        shift = noise[:, 2:] * (2 * p.jitter_px / 112)
        cos, sin = scale * angle.cos(), scale * angle.sin()
        return torch.stack([torch.stack([cos, -sin, shift[:, 0]], -1), torch.stack([sin, cos, shift[:, 1]], -1)], 1)

    def _embeddings(
        self,
        images: torch.Tensor,
        landmarks: torch.Tensor,
        generator: torch.Generator | None,
        members: set[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per model (of ``members``, default all), ``(F, N, D)`` unit embeddings of ``images`` (N)
        with F = 2 if flipped copies are used. Intermediate features land in ``self.surrogates.taps``."""
        n_views = images.shape[0] // landmarks.shape[0]
        lm = landmarks.repeat(n_views, 1, 1)
        jitter = self._jitter(images.shape[0], generator, images.device)
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

    @staticmethod
    def _likeness(emb: torch.Tensor, decoy: torch.Tensor) -> torch.Tensor:
        """``(F, V*B, D)`` vs ``(B, D)`` -> ``(B,)``: (1 + cosine) / 2 to the decoy, flips averaged, views summed."""
        batch = decoy.shape[0]
        cos = (emb * decoy.repeat(emb.shape[1] // batch, 1)).sum(-1)
        return ((1 + cos) / 2).mean(0).view(-1, batch).sum(0)

    def _tap_distance(self, tap: torch.Tensor, reference: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``(b,)``: 1 - cosine of pooled intermediate features, flips averaged and views summed.

        ``tap`` rows are ordered (flip, view, face) as :meth:`_embeddings` fed them;
        ``reference`` rows (flip, face) for the whole batch.
        """
        flips = 1 + self.preset.flip
        ref = reference.view(flips, -1, reference.shape[-1])[:, idx]  # (F, b, C)
        cur = tap.view(flips, -1, idx.numel(), tap.shape[-1])  # (F, V, b, C)
        return (1 - F.cosine_similarity(cur, ref[:, None], dim=-1)).mean(0).sum(0)

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

    @staticmethod
    def crop_size(preset: Preset) -> int:
        """Side of the square working crop: the face box plus room for the templates' margins."""
        return int(math.ceil(preset.work_face_px * 1.6 / 8) * 8)
