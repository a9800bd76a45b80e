"""`ransac_pnp` in torch, on the device the scene coordinates are on (issue 14).

The same DSAC*-style RANSAC as `ransac.py`, with the same settings and result, batched so that
a GPU never waits for the host while hypotheses are made and scored:

- one fixed batch of random 4-tuples, sized for `ransac_hypotheses` all-inlier tuples at 70 %
  outliers (capped at `ransac_max_tries`), instead of `ransac.py`'s batches-until-enough loop;
- P3P on the first 3 points of every tuple at once (`ransac.p3p_depths`, the same algebra as
  the numpy path); the 4th point validates each of the up to 4 solutions and picks one;
- the first `ransac_hypotheses` valid tuples are scored at once by the soft inlier count over
  all correspondences;
- the best is refined by Gauss-Newton on its inliers, re-gathering them while they grow.

Host syncs: one to drop non-finite rows before sampling, one per refinement round (its stop
test; typically 2-4 rounds) and the copy of the result. On the CPU the numpy RANSAC is faster
(benchmarks/RESULTS.md, session 21), so `Localizer` uses this one only on CUDA.
"""

from __future__ import annotations

import math
import types
from typing import Optional, Tuple, Union

import numpy as np
import torch

from ace_ros.core import geometry
from ace_ros.core.ransac import (check_intrinsics, make_result, p3p_depths, RansacResult,
                                 RansacSettings, _triangle_frames)

#: The inlier ratio the fixed batch of 4-tuples is sized for (ACE's hard frames: 70 %
#: outliers), so that ~`ransac_hypotheses` of them are all-inlier tuples.
DESIGN_INLIER_RATIO = 0.3
#: Gauss-Newton steps per refinement round; from a P3P pose they converge in ~3.
_GAUSS_NEWTON_STEPS = 5


def _cbrt(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.abs(x) ** (1.0 / 3.0)


#: The numpy names `ransac.p3p_depths` uses, for torch tensors.
_TORCH_OPS = types.SimpleNamespace(
    sqrt=torch.sqrt, clip=torch.clip, cos=torch.cos, arccos=torch.arccos, where=torch.where,
    abs=torch.abs, isfinite=torch.isfinite, stack=torch.stack, ones_like=torch.ones_like,
    cross=torch.linalg.cross, cbrt=_cbrt)


def solve_p3p_torch(rays: torch.Tensor, points_world: torch.Tensor
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched P3P as `ransac.solve_p3p`, but with a fixed (M, 4) layout of solutions.

    float64 on every device: in float32 the closed form misses the true solution (depths off
    by > 1 %) for 2.8 % of random triplets 10 m from the origin, and its 99th-percentile depth
    error is 14 % (float64: none, 2e-10); the batch is only ~10^4 tuples, so even a GPU with
    slow float64 spends little on it.

    Args:
        rays: (M, 3, 3) unit bearing vectors in the camera frame, one per row.
        points_world: (M, 3, 3) the matching world points, one per row.

    Returns:
        rotation (M, 4, 3, 3), translation (M, 4, 3) of the `cam_from_world` solution of each
        root, and valid (M, 4): a real root with positive depths and a non-degenerate
        triangle (invalid entries hold arbitrary, possibly non-finite values).
    """
    rays, points_world = rays.double(), points_world.double()
    depths, valid = p3p_depths(rays, points_world, _TORCH_OPS)
    points_cam = depths[..., None] * rays[:, None]  # (M, 4, 3, 3)
    frame_world, ok_world = _triangle_frames(points_world, _TORCH_OPS)
    frame_cam, ok_cam = _triangle_frames(points_cam, _TORCH_OPS)
    rotation = frame_cam @ frame_world.transpose(-1, -2)[:, None]
    translation = points_cam.mean(-2) - (rotation @ points_world.mean(-2)[:, None, :, None])[
        ..., 0]
    return rotation, translation, valid & ok_cam & ok_world[:, None]


def _project(rotation: torch.Tensor, translation: torch.Tensor, points: torch.Tensor,
             K: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(..., 3, 3) rotations, (..., 3) translations, (..., P, 3) points -> (..., P, 2) pixels
    and (..., P) depths."""
    cam = points @ rotation.transpose(-1, -2) + translation[..., None, :]
    depth = cam[..., 2]
    pixels = cam[..., :2] / depth[..., None] * torch.stack([K[0, 0], K[1, 1]]) + K[:2, 2]
    return pixels, depth


def _clamped_errors(rotation: torch.Tensor, translation: torch.Tensor, points: torch.Tensor,
                    pixels: torch.Tensor, K: torch.Tensor, settings: RansacSettings
                    ) -> torch.Tensor:
    """(H, 3, 3), (H, 3) `cam_from_world` -> (H, N) float32 reprojection errors in px, clamped
    at max_reprojection_px, which a point outside [min_depth, max_depth] also gets.

    As in `ransac._reprojection_errors`, float32 about the points' centre: fast, and precise
    for scenes far from the world origin.
    """
    centre = points.mean(0)
    translation = translation + rotation @ centre
    proj, depth = _project(rotation.float(), translation.float(),
                           (points - centre).float()[None], K.float())
    error = torch.linalg.vector_norm(proj - pixels.float(), dim=-1)
    usable = (depth >= settings.min_depth) & (depth <= settings.max_depth) & (error == error)
    return torch.where(usable, error.clamp(max=settings.max_reprojection_px),
                       settings.max_reprojection_px)


def _draw_tuples(n: int, pool: Optional[torch.Tensor], count: int,
                 generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """(count, 4) random indices into n correspondences, each drawn from `pool` ((n,) bool)
    when it holds at least 4, else from all; without a host sync."""
    draw = torch.rand((count, 4), generator=generator, device=generator.device,
                      dtype=torch.float64).to(device)
    if pool is None:
        return (draw * n).long().clamp_(max=n - 1)
    size = pool.sum()
    use = size >= 4
    size = torch.where(use, size, n)
    order = torch.argsort((~(pool | ~use)).to(torch.uint8), stable=True)  # the pool first
    return order[torch.minimum((draw * size).long(), size - 1)]


def _hypotheses(rays: torch.Tensor, points: torch.Tensor, pixels: torch.Tensor,
                K: torch.Tensor, settings: RansacSettings, idx: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first `ransac_hypotheses` consistent 4-tuples of `idx` ((M, 4)), as in
    `ransac._sample_hypotheses`: all 4 points within [min_depth, max_depth] and the inlier
    threshold, the 4th point's error choosing among P3P's solutions.

    Returns:
        rotation (H, 3, 3), translation (H, 3) float64 `cam_from_world`, valid (H,) bool, and
        the number of consistent tuples (a 0-dim tensor); H = min(ransac_hypotheses, M).
    """
    a, b, c, d = idx.unbind(1)  # not a list index: that would copy from the host each call
    distinct = (a != b) & (a != c) & (a != d) & (b != c) & (b != d) & (c != d)
    rotation, translation, valid = solve_p3p_torch(rays[idx[:, :3]], points[idx[:, :3]])
    proj, depth = _project(rotation, translation, points[idx][:, None], K)  # (M, 4, 4, ...)
    error = torch.linalg.vector_norm(proj - pixels[idx][:, None], dim=-1)
    consistent = valid & distinct[:, None] & (
        (error < settings.inlier_threshold_px) & (depth >= settings.min_depth)
        & (depth <= settings.max_depth)).all(dim=-1)
    root = torch.where(consistent, error[..., 3], math.inf).argmin(dim=1)
    good = consistent.any(dim=1)
    # The first good tuples, in drawing order (as the numpy loop takes them).
    rank = torch.where(good, torch.arange(len(idx), 0, -1, device=idx.device), 0)
    first = rank.topk(min(settings.ransac_hypotheses, len(idx))).indices
    rows, root = first, root[first]
    return rotation[rows, root], translation[rows, root], good[first], good.sum()


def best_hypothesis(rays: torch.Tensor, points: torch.Tensor, pixels: torch.Tensor,
                    K: torch.Tensor, settings: RansacSettings, pool: Optional[torch.Tensor],
                    tries: int, generator: torch.Generator
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw `tries` 4-tuples, make the hypotheses and score them: no host sync.

    Args:
        rays: (N, 3) unit bearing vectors of the (N, 2) `pixels`; points: (N, 3) float64.
        pool: (N,) bool, the correspondences tuples are drawn from (see `_draw_tuples`).

    Returns:
        rotation (3, 3), translation (3,) of the best-scoring `cam_from_world`, its soft
        inlier count, and the number of consistent tuples (0-dim tensors; with none, the
        pose is arbitrary).
    """
    idx = _draw_tuples(len(points), pool, tries, generator, points.device)
    rotation, translation, valid, n_good = _hypotheses(rays, points, pixels, K, settings, idx)
    error = _clamped_errors(rotation, translation, points, pixels, K, settings)
    beta = settings.soft_inlier_sharpness / settings.inlier_threshold_px
    scores = torch.sigmoid(-beta * (error - settings.inlier_threshold_px)).sum(dim=1)
    scores = torch.where(valid, scores, -math.inf)
    best = scores.argmax()[None]  # a 1-element index: a 0-dim one may become a Python int
    return rotation[best][0], translation[best][0], scores[best][0], n_good


def _axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """(3,) axis-angle -> (3, 3) rotation (Rodrigues), exact to second order near 0."""
    angle = torch.linalg.vector_norm(axis_angle)
    zero = torch.zeros((), dtype=axis_angle.dtype, device=axis_angle.device)
    x, y, z = axis_angle
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero]).reshape(3, 3)
    small = angle < 1e-6
    safe = torch.where(small, 1.0, angle)
    a = torch.where(small, 1.0, torch.sin(safe) / safe)
    b = torch.where(small, 0.5, (1 - torch.cos(safe)) / safe ** 2)
    return torch.eye(3, dtype=skew.dtype, device=skew.device) + a * skew + b * skew @ skew


def _gauss_newton(rotation: torch.Tensor, translation: torch.Tensor, points: torch.Tensor,
                  pixels: torch.Tensor, K: torch.Tensor, inliers: torch.Tensor
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Least-squares reprojection error over the (N,) bool `inliers`, from
    (3, 3), (3,) float64 `cam_from_world`; left-multiplied updates exp(w) (R, t) + v."""
    eye = torch.eye(6, dtype=points.dtype, device=points.device)
    used = inliers.to(points.dtype)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    for _ in range(_GAUSS_NEWTON_STEPS):
        cam = points @ rotation.T + translation  # (N, 3)
        # where, not a product with `used`: a point left out may lie at depth 0.
        inv_z = torch.where(inliers, 1.0 / cam[:, 2], 0.0)
        x, y = cam[:, 0] * inv_z, cam[:, 1] * inv_z
        residual = torch.cat([(fx * x + cx - pixels[:, 0]) * used,
                              (fy * y + cy - pixels[:, 1]) * used])  # (2N,)
        # d pixel / d (w, v) for cam' = exp(w) cam + v, at w = v = 0.
        zero = torch.zeros_like(x)
        jacobian = torch.cat([
            torch.stack([-fx * x * y, fx * (1 + x * x), -fx * y, fx * inv_z, zero,
                         -fx * x * inv_z], dim=1),
            torch.stack([-fy * (1 + y * y), fy * x * y, fy * x, zero, fy * inv_z,
                         -fy * y * inv_z], dim=1)]) * torch.cat([used, used])[:, None]
        hessian, gradient = jacobian.T @ jacobian, jacobian.T @ residual
        # A little Levenberg damping keeps a poorly constrained set solvable, with no check.
        damped = hessian + 1e-6 * torch.diag(hessian.diagonal()) + 1e-12 * eye
        step = -torch.linalg.solve_ex(damped, gradient)[0]
        step = torch.where(torch.isfinite(step).all(), step, 0.0)
        delta = _axis_angle_to_matrix(step[:3])
        rotation, translation = delta @ rotation, delta @ translation + step[3:]
    return rotation, translation


def _refine(rotation: torch.Tensor, translation: torch.Tensor, points: torch.Tensor,
            pixels: torch.Tensor, K: torch.Tensor, settings: RansacSettings
            ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`ransac._refine` in torch: refit on the inliers while they grow.

    Returns:
        (3, 3), (3,) refined `cam_from_world` and its (N,) inlier mask.
    """
    def inliers(r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        error = _clamped_errors(r[None], t[None], points, pixels, K, settings)
        return error[0] < settings.inlier_threshold_px

    mask = inliers(rotation, translation)
    for _ in range(settings.refinement_iterations):
        count = mask.sum()
        r, t = _gauss_newton(rotation, translation, points, pixels, K, mask)
        refined_mask = inliers(r, t)
        refined_count = refined_mask.sum()
        better = ((count >= 4) & (refined_count >= count) & torch.isfinite(r).all()
                  & torch.isfinite(t).all())
        rotation = torch.where(better, r, rotation)
        translation = torch.where(better, t, translation)
        mask = torch.where(better, refined_mask, mask)
        if not bool(better & (refined_count > count)):  # the round's one host sync
            break
    return rotation, translation, mask


def _rays(pixels: torch.Tensor, K: np.ndarray) -> torch.Tensor:
    """(N, 2) float64 pixels, (3, 3) host K -> (N, 3) unit bearing vectors."""
    # K inverted on the host: torch.linalg.inv checks for errors, a sync on CUDA.
    K_inv = torch.as_tensor(np.linalg.inv(K), device=pixels.device)
    rays = torch.cat([pixels, torch.ones_like(pixels[:, :1])], dim=1) @ K_inv.T
    return rays / torch.linalg.vector_norm(rays, dim=1, keepdim=True)


def ransac_pnp_torch(pixels: torch.Tensor, points_world: torch.Tensor,
                     K: Union[torch.Tensor, np.ndarray], settings: RansacSettings,
                     generator: Union[torch.Generator, int],
                     sample_mask: Optional[torch.Tensor] = None) -> RansacResult:
    """`ransac.ransac_pnp` on `points_world`'s device (deterministic given the generator).

    Args:
        pixels: (N, 2) OpenCV pixel coordinates in the image described by `K`.
        points_world: (N, 3) predicted scene coordinates of those pixels, world frame, metres;
            any float dtype. Rows with non-finite values in either input are ignored.
        K: (3, 3) pinhole intrinsics, fx and fy may differ; no skew, no distortion.
        settings: RANSAC settings; `ransac_max_tries` caps the one batch of 4-tuples.
        generator: source of the random 4-tuples (best on `points_world`'s device; one on
            another device draws there and copies), or a seed for a new one.
        sample_mask: (N,) bool, the correspondences minimal sets are drawn from; None, or
            fewer than 4 usable, draws from all.

    Returns:
        The pose and its inliers (numpy, on the host), or success=False with a reason.

    Raises:
        ValueError: for inputs of the wrong shape or invalid intrinsics.
        TypeError: if `generator` is neither a torch Generator nor an int.
    """
    device = points_world.device
    if isinstance(generator, int) and not isinstance(generator, bool):
        generator = torch.Generator(device=device).manual_seed(generator)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f'generator must be a torch.Generator or an int seed, got '
                        f'{type(generator).__name__}')
    K_host = np.asarray(K.cpu() if isinstance(K, torch.Tensor) else K, dtype=np.float64)
    check_intrinsics(K_host)
    pixels = torch.as_tensor(pixels, device=device).double()
    points_world = points_world.double()
    geometry.check_shape(pixels, (None, 2), 'pixels')
    geometry.check_shape(points_world, (len(pixels), 3), 'points_world')
    n_total = len(pixels)
    if sample_mask is not None:
        sample_mask = torch.as_tensor(sample_mask, device=device)
        geometry.check_shape(sample_mask, (n_total,), 'sample_mask')
    finite = torch.isfinite(pixels).all(dim=1) & torch.isfinite(points_world).all(dim=1)
    index = torch.nonzero(finite)[:, 0]  # a host sync, before any hypothesis
    index_host = index.cpu().numpy()
    if len(index) < 4:
        return make_result(f'too few correspondences ({len(index)} finite of {n_total}, '
                           'need 4)', settings, n_total, index_host)
    pixels, points_world = pixels[index], points_world[index]
    K = torch.as_tensor(K_host, device=device)
    rays = _rays(pixels, K_host)

    tries = min(settings.ransac_max_tries,
                math.ceil(1.25 * settings.ransac_hypotheses / DESIGN_INLIER_RATIO ** 4))
    pool = sample_mask[index].bool() if sample_mask is not None else None
    rotation, translation, score, n_good = best_hypothesis(
        rays, points_world, pixels, K, settings, pool, tries, generator)
    rotation, translation, mask = _refine(rotation, translation, points_world, pixels, K,
                                          settings)
    cam_from_world = torch.eye(4, dtype=torch.float64, device=device)
    cam_from_world[:3, :3], cam_from_world[:3, 3] = rotation, translation
    # The copy to the host, and the end's sync.
    n_good, score = int(n_good), float(score)
    cam_from_world, mask = cam_from_world.cpu().numpy(), mask.cpu().numpy()
    if n_good == 0:
        return make_result(f'no valid hypothesis in {tries} tries', settings, n_total,
                           index_host)
    if mask.sum() < settings.min_inliers:
        return make_result(f'too few inliers ({int(mask.sum())} < {settings.min_inliers})',
                           settings, n_total, index_host, mask=mask, score=score)
    return make_result('', settings, n_total, index_host, cam_from_world, mask, score)
