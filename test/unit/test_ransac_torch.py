"""The torch PnP-RANSAC (issue 14) against known poses, the numpy RANSAC and cv2's P3P."""

from __future__ import annotations

from typing import Tuple

import cv2
import numpy as np
import pytest
import torch

from ace_ros.core import geometry
from ace_ros.core import ransac, ransac_torch
from ace_ros.core.ransac import RansacResult, RansacSettings, ransac_pnp, solve_p3p
from ace_ros.core.ransac_torch import ransac_pnp_torch, solve_p3p_torch

K = np.array([[520.0, 0.0, 322.5], [0.0, 545.0, 236.0], [0.0, 0.0, 1.0]])
DEVICES = ['cpu', pytest.param('cuda', marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason='no CUDA device'))]
# The localizer's tries cap (LocalizationConfig), so the tests see the batch it draws.
SETTINGS = RansacSettings(ransac_max_tries=20_000)


def _scene(seed: int, n: int, outlier_ratio: float, noise_px: float
           ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pixels (n, 2) on ACE's 8 px cell grid of a 480 x 640 image, scene coordinates (n, 3),
    world_from_cam (4, 4), true-inlier mask (n,); outliers are other points of the scene."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:480:8, 0:640:8] + 3.5
    pixels = np.stack([u.ravel(), v.ravel()], axis=1)[:n]
    rays = np.concatenate([pixels, np.ones((n, 1))], axis=1) @ np.linalg.inv(K).T
    world_from_cam = geometry.make_pose(
        geometry.axis_angle_to_matrix(rng.normal(size=3)), rng.normal(scale=3.0, size=3))
    points = geometry.transform_points(world_from_cam, rays * rng.uniform(1, 5, (n, 1)))
    inlier = rng.random(n) >= outlier_ratio
    points[~inlier] = rng.uniform(points.min(0), points.max(0), ((~inlier).sum(), 3))
    return pixels + rng.normal(scale=noise_px, size=pixels.shape), points, world_from_cam, inlier


def _run(pixels: np.ndarray, points: np.ndarray, device: str, seed: int = 0,
         settings: RansacSettings = SETTINGS, **kwargs) -> RansacResult:
    return ransac_pnp_torch(torch.as_tensor(pixels, device=device),
                            torch.as_tensor(points, device=device), K, settings, seed, **kwargs)


def _random_p3p(seed: int, m: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(m, 3, 3) rays, world points, and their (m, 3, 2) pixels under one pose."""
    rng = np.random.default_rng(seed)
    points_cam = rng.uniform([-2, -2, 1], [2, 2, 6], size=(m, 3, 3))
    rays = points_cam / np.linalg.norm(points_cam, axis=2, keepdims=True)
    world_from_cam = geometry.make_pose(geometry.axis_angle_to_matrix(rng.normal(size=3)),
                                        rng.normal(size=3))
    points_world = points_cam @ world_from_cam[:3, :3].T + world_from_cam[:3, 3]
    pixels = geometry.project(points_cam.reshape(-1, 3), K).reshape(m, 3, 2)
    return rays, points_world, pixels


@pytest.mark.parametrize('seed', [0, 1])
def test_p3p_matches_numpy_and_opencv(seed: int) -> None:
    rays, points_world, pixels = _random_p3p(seed, 300)
    rotation, translation, valid = (x.numpy() for x in solve_p3p_torch(
        torch.from_numpy(rays), torch.from_numpy(points_world)))
    sample, root = np.nonzero(valid)
    # The same solutions as numpy's, in the same order (its roots are compacted).
    rotation_np, translation_np, sample_np = solve_p3p(rays, points_world)
    np.testing.assert_array_equal(sample, sample_np)
    np.testing.assert_allclose(rotation[sample, root], rotation_np, atol=1e-7)
    np.testing.assert_allclose(translation[sample, root], translation_np, atol=1e-7)
    matched = 0
    for i in range(0, 300, 3):  # cv2.solveP3P is slow: every third triplet
        _, rvecs, tvecs = cv2.solveP3P(points_world[i], pixels[i], K, None,
                                       flags=cv2.SOLVEPNP_P3P)
        ours = np.concatenate([rotation[i][valid[i]].reshape(-1, 9),
                               translation[i][valid[i]]], axis=1)
        assert len(ours) == len(rvecs)
        for rvec, tvec in zip(rvecs, tvecs):
            theirs = np.concatenate([cv2.Rodrigues(rvec)[0].ravel(), tvec.ravel()])
            matched += np.abs(ours - theirs).max(axis=1).min() < 1e-6
    assert matched >= 0.99 * valid[::3].sum()


def test_p3p_degenerate_triplets_are_invalid() -> None:
    rays, points_world, _ = _random_p3p(2, 4)
    points_world[0] = points_world[0, :1]  # identical points
    points_world[1, 2] = 2 * points_world[1, 1] - points_world[1, 0]  # collinear
    valid = solve_p3p_torch(torch.from_numpy(rays), torch.from_numpy(points_world))[2]
    assert not valid[:2].any() and valid[2:].any(dim=1).all()


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('outlier_ratio', [0.5, 0.7])
def test_recovers_pose_and_agrees_with_numpy(device: str, outlier_ratio: float) -> None:
    pixels, points, world_from_cam, inlier = _scene(3, 4800, outlier_ratio, noise_px=1.0)
    result = _run(pixels, points, device)
    assert result.success and result.reason == '', result.reason
    t_err, r_err = geometry.pose_error(result.world_from_cam, world_from_cam)
    assert t_err < 0.01 and r_err < 0.5, (t_err, r_err)
    found = result.inlier_mask
    assert found.shape == (4800,) and result.inlier_count == found.sum()
    assert (found & inlier).sum() >= 0.95 * inlier.sum()
    assert (found & ~inlier).sum() <= 0.05 * found.sum()
    assert result.confidence == pytest.approx(1 - np.exp(-found.sum() / 500.0))
    np.testing.assert_allclose(result.cam_from_world @ result.world_from_cam, np.eye(4),
                               atol=1e-9)
    reference = ransac_pnp(pixels, points, K, SETTINGS, np.random.default_rng(0))
    t_diff, r_diff = geometry.pose_error(result.world_from_cam, reference.world_from_cam)
    assert t_diff < 2e-3 and r_diff < 0.1, (t_diff, r_diff)
    assert abs(result.inlier_count - reference.inlier_count) <= 0.01 * reference.inlier_count
    assert result.score == pytest.approx(reference.score, rel=0.05)


def test_result_is_least_squares_optimum_of_its_inliers() -> None:
    pixels, points, _, _ = _scene(6, 4800, 0.5, noise_px=2.0)
    result = _run(pixels, points, 'cpu')
    mask, cam_from_world = result.inlier_mask, result.cam_from_world
    _, rvec, tvec = cv2.solvePnP(points[mask], pixels[mask], K, None,
                                 cv2.Rodrigues(cam_from_world[:3, :3])[0],
                                 cam_from_world[:3, 3].copy(), useExtrinsicGuess=True,
                                 flags=cv2.SOLVEPNP_ITERATIVE)
    optimum = geometry.make_pose(cv2.Rodrigues(rvec)[0], tvec)
    t_diff, r_diff = geometry.pose_error(cam_from_world, optimum)
    assert t_diff < 1e-6 and r_diff < 1e-4, (t_diff, r_diff)


def test_refinement_regathers_inliers_like_numpy() -> None:
    pixels, points, world_from_cam, inlier = _scene(7, 4800, 0.3, noise_px=1.0)
    # Off by 3 degrees: a fraction of the inliers reprojects within the threshold at first.
    start = geometry.invert_pose(world_from_cam)
    start[:3, :3] = geometry.axis_angle_to_matrix([0.0, np.radians(3.0), 0.0]) @ start[:3, :3]
    first = ransac._reprojection_errors(start[None, :3, :3], start[None, :3, 3], points,
                                        pixels, K, SETTINGS)[0] < 10.0
    assert first.sum() < 0.6 * inlier.sum()
    tensors = [torch.from_numpy(x) for x in (start[:3, :3], start[:3, 3], points, pixels, K)]
    rotation, translation, mask = ransac_torch._refine(*tensors, SETTINGS)
    reference, reference_mask = ransac._refine(start, points, pixels, K, SETTINGS)
    assert (mask.numpy() & inlier).sum() >= 0.98 * inlier.sum()
    assert abs(int(mask.sum()) - int(reference_mask.sum())) <= 2
    refined = geometry.make_pose(rotation.numpy(), translation.numpy())
    assert geometry.pose_error(refined, reference)[0] < 1e-4


def test_fourth_point_validates_hypotheses() -> None:
    pixels, points, _, inlier = _scene(8, 4800, 0.5, noise_px=0.5)
    rng = np.random.default_rng(0)
    good, bad = np.flatnonzero(inlier), np.flatnonzero(~inlier)
    idx = rng.choice(good, size=(400, 4))
    idx[200:, 3] = rng.choice(bad, size=200)  # an outlier as the 4th point
    tensors = [torch.from_numpy(x) for x in (pixels, points, K)]
    rays = torch.cat([tensors[0], torch.ones(4800, 1, dtype=torch.float64)], dim=1) @ \
        torch.linalg.inv(tensors[2]).T
    rays = rays / rays.norm(dim=1, keepdim=True)
    count = [int(ransac_torch._hypotheses(rays, tensors[1], tensors[0], tensors[2], SETTINGS,
                                          torch.from_numpy(part))[3])
             for part in (idx[:200], idx[200:])]
    assert count[0] >= 150 and count[1] <= 10, count


#: The Python ways to a host sync (a CUDA device has its own check, below).
SYNCS = ('item', 'tolist', 'cpu', 'numpy', 'nonzero', '__bool__', '__int__', '__float__',
         '__index__')


@pytest.mark.parametrize('device', DEVICES)
def test_no_host_sync_while_making_and_scoring_hypotheses(device: str, monkeypatch) -> None:
    pixels, points, world_from_cam, inlier = _scene(9, 4800, 0.5, noise_px=1.0)
    pixels_t, points_t = (torch.from_numpy(x).to(device) for x in (pixels, points))
    rays, K_t = ransac_torch._rays(pixels_t, K), torch.from_numpy(K).to(device)
    pool = torch.from_numpy(inlier | (np.arange(4800) % 2 == 0)).to(device)
    generator = torch.Generator(device).manual_seed(0)

    def sync(*args, **kwargs):
        raise AssertionError('a host sync')
    with monkeypatch.context() as patch:
        if device == 'cuda':
            torch.cuda.set_sync_debug_mode('error')
        else:
            for name in SYNCS:
                patch.setattr(torch.Tensor, name, sync)
        try:
            rotation, translation, score, n_good = ransac_torch.best_hypothesis(
                rays, points_t, pixels_t, K_t, SETTINGS, pool, 9877, generator)
        finally:
            if device == 'cuda':
                torch.cuda.set_sync_debug_mode('default')
    assert int(n_good) > SETTINGS.ransac_hypotheses and float(score) > 0.8 * inlier.sum()
    hypothesis = geometry.make_pose(rotation.cpu().numpy(), translation.cpu().numpy())
    t_err, r_err = geometry.pose_error(geometry.invert_pose(hypothesis), world_from_cam)
    assert t_err < 0.1 and r_err < 2.0, (t_err, r_err)


def test_deterministic_given_seed_and_float32_points() -> None:
    pixels, points, world_from_cam, _ = _scene(4, 2000, 0.6, noise_px=1.0)
    a, b, c = (_run(pixels, points, 'cpu', seed) for seed in (5, 5, 6))
    np.testing.assert_array_equal(a.world_from_cam, b.world_from_cam)
    np.testing.assert_array_equal(a.inlier_mask, b.inlier_mask)
    assert c.success and geometry.pose_error(a.world_from_cam, c.world_from_cam)[0] < 0.01
    generator = torch.Generator().manual_seed(5)
    # A head's float32 points: the same pose up to float32 rounding.
    single = ransac_pnp_torch(torch.from_numpy(pixels), torch.from_numpy(points).float(), K,
                              SETTINGS, generator)
    assert geometry.pose_error(single.world_from_cam, world_from_cam)[0] < 0.01


def test_sample_mask_and_non_finite_rows() -> None:
    pixels, points, world_from_cam, inlier = _scene(5, 1000, 0.5, noise_px=0.5)
    points[::10] = np.nan
    inlier[::10] = False
    few = np.zeros(1000, dtype=bool)
    few[np.flatnonzero(inlier)[:20]] = True
    result = _run(pixels, points, 'cpu', sample_mask=torch.from_numpy(few))
    assert result.success and result.inlier_count > 0.9 * inlier.sum()
    assert not result.inlier_mask[::10].any() and result.n_correspondences == 1000
    assert geometry.pose_error(result.world_from_cam, world_from_cam)[0] < 0.01
    # Minimal sets from outliers only: no pose; fewer than 4 in the mask: drawn from all.
    assert not _run(pixels, points, 'cpu', sample_mask=torch.from_numpy(~inlier)).success
    few[np.flatnonzero(few)[3:]] = False
    assert _run(pixels, points, 'cpu', sample_mask=torch.from_numpy(few)).success


def _check_failed(result: RansacResult, n: int, reason: str) -> None:
    assert not result.success and reason in result.reason, result.reason
    assert result.confidence == 0.0 and result.n_correspondences == n
    assert result.inlier_mask.shape == (n,) and result.inlier_mask.dtype == bool
    np.testing.assert_array_equal(result.world_from_cam, np.eye(4))


@pytest.mark.parametrize('device', DEVICES)
def test_failures_are_results(device: str) -> None:
    for n in (0, 3):
        _check_failed(_run(np.full((n, 2), 100.0), np.ones((n, 3)), device), n,
                      'too few correspondences')
    rng = np.random.default_rng(0)
    pixels = rng.uniform([0, 0], [640, 480], size=(1000, 2))
    garbage = _run(pixels, rng.uniform(-5, 5, size=(1000, 3)), device)
    _check_failed(garbage, 1000, 'too few inliers')
    assert garbage.inlier_count < SETTINGS.min_inliers
    collinear = np.outer(rng.uniform(1, 5, 1000), [0.2, 0.1, 1.0])
    _check_failed(_run(pixels, collinear, device), 1000, 'no valid hypothesis')
    nan = np.full((1000, 3), np.nan)
    _check_failed(_run(pixels, nan, device), 1000, 'too few correspondences')


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match='points_world'):
        _run(np.zeros((10, 2)), np.zeros((9, 3)), 'cpu')
    with pytest.raises(ValueError, match='pixels'):
        _run(np.zeros((10, 3)), np.zeros((10, 3)), 'cpu')
    with pytest.raises(ValueError, match='K'):
        ransac_pnp_torch(torch.zeros(10, 2), torch.zeros(10, 3), -K, SETTINGS, 0)
    with pytest.raises(ValueError, match='sample_mask'):
        _run(np.zeros((10, 2)), np.zeros((10, 3)), 'cpu', sample_mask=torch.ones(9).bool())
    with pytest.raises(TypeError, match='generator'):
        ransac_pnp_torch(torch.zeros(10, 2), torch.zeros(10, 3), K, SETTINGS,
                         np.random.default_rng(0))
