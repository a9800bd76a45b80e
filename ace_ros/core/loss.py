"""ACE's mapping loss: an annealed robust reprojection loss on predicted scene coordinates."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def soft_clamp_tau(progress: float, tau_max: float = 50.0, tau_min: float = 1.0) -> float:
    """Curriculum for the robust loss's soft clamp (px) at `progress` = iteration / total.

    tau = (1 - w) * tau_max + tau_min with w = 1 - sqrt(1 - t^2): it stays wide for most of
    training (tolerating wrong early predictions) and closes quickly at the end.
    """
    t = min(max(progress, 0.0), 1.0)
    w = 1.0 - math.sqrt(1.0 - t * t)
    return (1.0 - w) * tau_max + tau_min


@dataclass(frozen=True)
class LossOutput:
    """One batch's loss and what it says about the predictions.

    The statistics are read from the device only when asked for (`valid_fraction`,
    `median_error_px`): a training loop that reports every N steps then waits for the
    device every N steps, not at each one (on a GPU, each wait stalls the step queue)."""

    loss: torch.Tensor          # scalar, differentiable
    error_px: torch.Tensor      # (B,) L1 reprojection error of each prediction, detached
    valid: torch.Tensor         # (B,) bool: in front of the camera and sane

    @property
    def valid_fraction(self) -> float:
        """Share of predictions in front of the camera and sane."""
        return float(self.valid.float().mean())

    @property
    def median_error_px(self) -> float:
        """Median error of the valid predictions (nan when none)."""
        errors = self.error_px[self.valid]
        return float(errors.median()) if len(errors) else float('nan')


def reprojection_loss(points_world: torch.Tensor, pixels: torch.Tensor,
                      cam_from_world: torch.Tensor, K: torch.Tensor, K_inv: torch.Tensor,
                      tau: float, depth_min: float = 0.1, depth_max: float = 1000.0,
                      max_error_px: float = 1000.0,
                      invalid_target_depth: float = 10.0) -> LossOutput:
    """Robust reprojection loss for a batch of cells from many images.

    Args:
        points_world: (B, 3) predicted scene coordinates, world frame.
        pixels: (B, 2) pixel position (x, y) of each cell in its (augmented) image.
        cam_from_world: (B, 3, 4) pose of each cell's image.
        K, K_inv: (B, 3, 3) intrinsics of each cell's image and their inverse.
        tau: soft clamp (px) from `soft_clamp_tau`.

    Valid predictions (depth in [depth_min, depth_max], L1 error < max_error_px) add
    tau * tanh(e / tau); invalid ones add the camera-frame L1 distance to a point
    `invalid_target_depth` along the cell's ray, pulling them back in front of the camera.
    """
    points = points_world.float()
    points_cam = torch.einsum('bij,bj->bi', cam_from_world[:, :, :3], points) \
        + cam_from_world[:, :, 3]
    depth = points_cam[:, 2]
    projected = torch.einsum('bij,bj->bi', K, points_cam)
    uv = projected[:, :2] / projected[:, 2:3].clamp(min=depth_min)
    error = (uv - pixels).abs().sum(dim=1)

    valid = (depth >= depth_min) & (depth <= depth_max) & (error < max_error_px)
    # Both terms for every cell, one kept by `valid`: masked indexing would make the host
    # wait for the device to learn how many cells each side has.
    valid_term = tau * torch.tanh(error.clamp(max=max_error_px) / tau)
    pixel_h = torch.cat([pixels, torch.ones_like(pixels[:, :1])], dim=1)
    target = torch.einsum('bij,bj->bi', K_inv, pixel_h) * invalid_target_depth
    invalid_term = (points_cam - target).abs().sum(dim=1)
    loss = torch.where(valid, valid_term, invalid_term).sum() / points.shape[0]
    return LossOutput(loss, error.detach(), valid)


def target_loss(points_world: torch.Tensor, targets: torch.Tensor,
                cam_from_world: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """3D loss towards triangulated targets, in the reprojection loss's units.

    For the cells with a target (rows of `targets` without NaN), the 3D distance between
    prediction and target is expressed in pixels at the target's depth (focal length x
    distance / depth), so that depth errors count as much as lateral ones and the term adds
    to `reprojection_loss` on one scale. It is not clamped: a warm start must pull hardest
    where the prediction is furthest off, where the soft-clamped reprojection loss gives
    almost no gradient (oracle features, 40 iterations: 5.4 px training error unclamped,
    18 px clamped like the reprojection loss, 15 px without targets). Wrong matches (a few
    percent) are handled by fading the targets out before the end of training.

    Returns the sum over the target cells (divide by the batch size like the reprojection
    loss); 0 when the batch has none.
    """
    has = ~torch.isnan(targets[:, 0])
    # Every row computed, those without a target zeroed (no host wait, as in
    # `reprojection_loss`); their NaN replaced first, or it would reach the gradient.
    target = torch.where(has[:, None], targets, torch.zeros_like(targets))
    points = points_world.float()
    rotation, translation = cam_from_world[:, :, :3], cam_from_world[:, :, 3]
    depth = (torch.einsum('bj,bj->b', rotation[:, 2], target) + translation[:, 2]).clamp(min=0.1)
    focal = 0.5 * (K[:, 0, 0] + K[:, 1, 1])
    distance = (points - target).norm(dim=1)  # its gradient at 0 is 0 (torch masks it)
    return torch.where(has, focal * distance / depth, torch.zeros_like(depth)).sum()
