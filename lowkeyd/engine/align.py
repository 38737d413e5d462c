"""Differentiable face alignment: warp each face onto a recogniser's landmark template.

The warp is a similarity transform fitted to the five landmarks and applied with
``affine_grid``/``grid_sample``, so gradients of a recogniser's output reach
the photo's own pixels. Pixel centres sit at integer coordinates (OpenCV's
convention), which is why the normalisation below uses ``align_corners=False``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def similarity_transform(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity (rotation, uniform scale, translation) taking ``src`` points to ``dst``.

    ``src`` is ``(..., N, 2)``, ``dst`` is ``(N, 2)`` or broadcastable; returns ``(..., 2, 3)``.
    Umeyama's closed form without reflection; in 2-D it reduces to two sums.
    """
    src = src.to(torch.float64)
    dst = dst.to(torch.float64).expand_as(src)
    src_mean, dst_mean = src.mean(-2, keepdim=True), dst.mean(-2, keepdim=True)
    s, d = src - src_mean, dst - dst_mean
    # With complex numbers z = x + iy, the best similarity is d ~ a*s, a = <s, d> / <s, s>.
    dot = (s * d).sum((-2, -1))
    cross = (s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0]).sum(-1)
    norm = (s * s).sum((-2, -1))
    a, b = dot / norm, cross / norm
    rot = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], -2)
    shift = dst_mean.squeeze(-2) - (rot @ src_mean.transpose(-1, -2)).squeeze(-1)
    return torch.cat([rot, shift.unsqueeze(-1)], -1)


def _pixel_to_normalised(width: int, height: int, like: torch.Tensor) -> torch.Tensor:
    return like.new_tensor([[2.0 / width, 0.0, 1.0 / width - 1.0], [0.0, 2.0 / height, 1.0 / height - 1.0], [0, 0, 1]])


def alignment_theta(
    landmarks: torch.Tensor, template: torch.Tensor, image_size: tuple[int, int], output_size: tuple[int, int]
) -> torch.Tensor:
    """``affine_grid`` matrices ``(B, 2, 3)`` that sample each face onto ``template``.

    ``landmarks`` ``(B, 5, 2)`` are in pixels of images of ``image_size`` ``(H, W)``;
    ``template`` ``(5, 2)`` in pixels of the ``output_size`` ``(h, w)`` face.
    """
    # Fit photo -> template (the direction ArcFace-style alignment and OpenCV fit; the
    # least-squares fits of the two directions differ slightly), invert it to map output
    # pixels to input pixels, then wrap both sides in grid_sample's [-1, 1] coordinates.
    in_to_out = similarity_transform(landmarks, template.to(landmarks))
    bottom = in_to_out.new_tensor([0.0, 0.0, 1.0]).expand(in_to_out.shape[0], 1, 3)
    out_to_in = torch.linalg.inv(torch.cat([in_to_out, bottom], 1))
    (h, w), (H, W) = output_size, image_size
    to_norm_in = _pixel_to_normalised(W, H, out_to_in)
    from_norm_out = torch.linalg.inv(_pixel_to_normalised(w, h, out_to_in))
    return (to_norm_in @ out_to_in @ from_norm_out)[:, :2].to(torch.float32)


def warp_faces(
    images: torch.Tensor,
    landmarks: torch.Tensor,
    template: torch.Tensor,
    size: tuple[int, int],
) -> torch.Tensor:
    """Aligned faces ``(B, 3, h, w)`` from ``images`` ``(B, 3, H, W)`` and their ``(B, 5, 2)`` landmarks.

    Outside the image, edge pixels are repeated (a face at the border still
    warps cleanly).
    """
    theta = alignment_theta(landmarks, template, (images.shape[-2], images.shape[-1]), size)
    grid = F.affine_grid(theta.to(images.dtype), [images.shape[0], images.shape[1], *size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
