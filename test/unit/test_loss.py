"""Tests for ace_ros.core.loss: the tau curriculum and the robust reprojection loss."""

from __future__ import annotations

import math
from typing import Tuple

from ace_ros.core import geometry
from ace_ros.core.loss import reprojection_loss, soft_clamp_tau
import numpy as np
import pytest
import torch

K_NP = np.array([[200.0, 0.0, 31.5], [0.0, 220.0, 23.5], [0.0, 0.0, 1.0]])

DEVICES = ['cpu', pytest.param('cuda', marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason='no CUDA device'))]


def _batch(b: int, seed: int = 0, device: str = 'cpu'
           ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Points (B, 3) in front of random cameras, their exact pixels, poses, K, K^-1."""
    rng = np.random.default_rng(seed)
    points, pixels, poses = [], [], []
    for _ in range(b):
        world_from_cam = geometry.make_pose(geometry.axis_angle_to_matrix(rng.normal(size=3)),
                                            rng.uniform(-2, 2, size=3))
        cam_from_world = geometry.invert_pose(world_from_cam)
        point_cam = rng.uniform([-1, -1, 1], [1, 1, 5])
        points.append(geometry.transform_points(world_from_cam, point_cam[None])[0])
        pixels.append(geometry.project(point_cam[None], K_NP)[0])
        poses.append(cam_from_world[:3])

    def tensor(x):
        return torch.tensor(np.array(x), dtype=torch.float32, device=device)

    K = tensor([K_NP] * b)
    return tensor(points), tensor(pixels), tensor(poses), K, torch.linalg.inv(K)


def _identity_poses(b: int) -> torch.Tensor:
    return torch.eye(4)[:3].expand(b, 3, 4).clone()


def _k_tensors(b: int) -> Tuple[torch.Tensor, torch.Tensor]:
    K = torch.tensor(K_NP, dtype=torch.float32).expand(b, 3, 3).clone()
    return K, torch.linalg.inv(K)


def test_soft_clamp_tau_endpoints_and_midpoint():
    assert soft_clamp_tau(0.0) == pytest.approx(51.0)
    assert soft_clamp_tau(1.0) == pytest.approx(1.0)
    w = 1.0 - math.sqrt(1.0 - 0.25)
    assert soft_clamp_tau(0.5) == pytest.approx((1.0 - w) * 50.0 + 1.0)
    assert soft_clamp_tau(0.5) == pytest.approx(44.30127, abs=1e-5)


def test_soft_clamp_tau_is_monotone_decreasing_and_clamped():
    values = [soft_clamp_tau(t) for t in np.linspace(0.0, 1.0, 101)]
    assert all(a > b for a, b in zip(values, values[1:]))
    assert soft_clamp_tau(-0.5) == pytest.approx(51.0)
    assert soft_clamp_tau(1.5) == pytest.approx(1.0)


def test_soft_clamp_tau_custom_range():
    assert soft_clamp_tau(0.0, tau_max=20.0, tau_min=2.0) == pytest.approx(22.0)
    assert soft_clamp_tau(1.0, tau_max=20.0, tau_min=2.0) == pytest.approx(2.0)


@pytest.mark.parametrize('device', DEVICES)
def test_perfect_prediction_gives_zero_loss(device):
    points, pixels, poses, K, K_inv = _batch(16, device=device)
    out = reprojection_loss(points, pixels, poses, K, K_inv, tau=10.0)
    assert out.loss.item() == pytest.approx(0.0, abs=1e-3)
    assert out.valid_fraction == 1.0
    assert out.median_error_px == pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize('tau', [1.0, 5.0, 50.0])
def test_pixel_error_gives_tau_tanh_of_l1_error(tau):
    points, pixels, poses, K, K_inv = _batch(4, seed=1)
    offsets = torch.tensor([[3.0, -4.0], [0.0, 2.0], [-10.0, 0.0], [6.0, 6.0]])
    l1 = offsets.abs().sum(dim=1)  # 7, 2, 10, 12 px: L1, not Euclidean
    out = reprojection_loss(points, pixels + offsets, poses, K, K_inv, tau=tau)
    expected = (tau * torch.tanh(l1 / tau)).sum() / 4
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-3)
    assert out.valid_fraction == 1.0
    # torch's median of an even count is the lower middle value.
    assert out.median_error_px == pytest.approx(7.0, abs=1e-2)


def test_point_behind_camera_is_invalid_and_pulled_to_10m_on_the_ray():
    K, K_inv = _k_tensors(1)
    pixel = torch.tensor([[40.0, 10.0]])
    point = torch.tensor([[0.3, -0.2, -2.0]])  # camera frame = world frame
    out = reprojection_loss(point, pixel, _identity_poses(1), K, K_inv, tau=5.0)
    target = 10.0 * np.array([(40.0 - 31.5) / 200.0, (10.0 - 23.5) / 220.0, 1.0])
    expected = np.abs(np.array([0.3, -0.2, -2.0]) - target).sum()
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert out.valid_fraction == 0.0
    assert math.isnan(out.median_error_px)


def test_invalid_target_uses_the_pose():
    # With a non-identity pose the invalid term is measured in the camera frame.
    rng = np.random.default_rng(2)
    world_from_cam = geometry.make_pose(geometry.axis_angle_to_matrix(rng.normal(size=3)),
                                        [1.0, -2.0, 0.5])
    cam_from_world = geometry.invert_pose(world_from_cam)
    point_cam = np.array([0.1, 0.2, -1.0])
    point_world = geometry.transform_points(world_from_cam, point_cam[None])
    pixel = np.array([[5.0, 30.0]])
    target = 10.0 * np.linalg.inv(K_NP) @ np.array([5.0, 30.0, 1.0])
    K, K_inv = _k_tensors(1)
    out = reprojection_loss(torch.tensor(point_world, dtype=torch.float32),
                            torch.tensor(pixel, dtype=torch.float32),
                            torch.tensor(cam_from_world[None, :3], dtype=torch.float32),
                            K, K_inv, tau=5.0)
    assert out.loss.item() == pytest.approx(np.abs(point_cam - target).sum(), rel=1e-4)


@pytest.mark.parametrize('point, reason', [
    ([0.0, 0.0, 0.05], 'closer than depth_min'),
    ([0.0, 0.0, 2000.0], 'farther than depth_max'),
    ([20.0, 0.0, 1.0], 'reprojection error over max_error_px'),
])
def test_invalid_conditions(point, reason):
    K, K_inv = _k_tensors(2)
    points = torch.tensor([point, [0.0, 0.0, 2.0]])
    pixels = torch.tensor([[31.5, 23.5], [31.5, 23.5]])
    out = reprojection_loss(points, pixels, _identity_poses(2), K, K_inv, tau=5.0)
    assert out.valid_fraction == 0.5, reason
    target = torch.tensor([0.0, 0.0, 10.0])  # the principal point's ray
    expected = (torch.tensor(point) - target).abs().sum().item() / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-5), reason


def test_mixed_batch_sums_and_divides_by_batch_size():
    K, K_inv = _k_tensors(3)
    tau = 4.0
    points = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 2.0], [1.0, 1.0, -1.0]])
    # first: exact; second: 3 px off in x; third: behind the camera
    pixels = torch.tensor([[31.5, 23.5], [34.5, 23.5], [31.5, 23.5]])
    out = reprojection_loss(points, pixels, _identity_poses(3), K, K_inv, tau=tau)
    invalid = abs(1.0 - 0.0) + abs(1.0 - 0.0) + abs(-1.0 - 10.0)
    expected = (0.0 + tau * math.tanh(3.0 / tau) + invalid) / 3
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert out.valid_fraction == pytest.approx(2 / 3)


def test_loss_is_a_batch_mean():
    points, pixels, poses, K, K_inv = _batch(8, seed=3)
    pixels = pixels + torch.linspace(-5, 5, 8)[:, None]
    whole = reprojection_loss(points, pixels, poses, K, K_inv, tau=3.0).loss
    halves = [reprojection_loss(points[s], pixels[s], poses[s], K[s], K_inv[s], tau=3.0).loss
              for s in (slice(0, 4), slice(4, 8))]
    assert whole.item() == pytest.approx((halves[0] + halves[1]).item() / 2, rel=1e-5)
    doubled = reprojection_loss(points.repeat(2, 1), pixels.repeat(2, 1), poses.repeat(2, 1, 1),
                                K.repeat(2, 1, 1), K_inv.repeat(2, 1, 1), tau=3.0).loss
    assert doubled.item() == pytest.approx(whole.item(), rel=1e-5)


def test_gradient_pulls_invalid_point_toward_target():
    K, K_inv = _k_tensors(2)
    pixels = torch.tensor([[40.0, 10.0], [31.5, 23.5]])
    target = (K_inv[0] @ torch.tensor([40.0, 10.0, 1.0])) * 10.0
    points = torch.tensor([[0.3, -0.2, -2.0], [0.0, 0.0, 2.0]], requires_grad=True)
    out = reprojection_loss(points, pixels, _identity_poses(2), K, K_inv, tau=5.0)
    out.loss.backward()
    # d/dp |p - target|_1 / B = sign(p - target) / B
    expected = torch.sign(points.detach()[0] - target) / 2
    torch.testing.assert_close(points.grad[0], expected)
    before = (points.detach()[0] - target).abs().sum()
    after = (points.detach()[0] - 0.1 * points.grad[0] - target).abs().sum()
    assert after < before


def test_gradient_reduces_valid_reprojection_error():
    points, pixels, poses, K, K_inv = _batch(4, seed=4)
    pixels = pixels + torch.tensor([2.0, -1.0])
    points.requires_grad_(True)
    first = reprojection_loss(points, pixels, poses, K, K_inv, tau=10.0)
    first.loss.backward()
    with torch.no_grad():
        stepped = points - 1e-4 * points.grad
    second = reprojection_loss(stepped, pixels, poses, K, K_inv, tau=10.0)
    assert second.loss.item() < first.loss.item()
