"""PnP-RANSAC on synthetic correspondences with known ground truth."""

from __future__ import annotations

import dataclasses
from typing import Tuple

import cv2
import numpy as np
import pytest

from ace_ros.core import geometry
from ace_ros.core.ransac import (RansacResult, RansacSettings, coherent_cells, ransac_pnp,
                                 solve_p3p)

# fx != fy, principal point off-centre, as the full-K path must handle.
K = np.array([[520.0, 0.0, 322.5], [0.0, 545.0, 236.0], [0.0, 0.0, 1.0]])
SEEDS = [0, 1, 2]


def _scene(seed: int, n: int, outlier_ratio: float = 0.0, noise_px: float = 0.0,
           grid: bool = False
           ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pixels (n, 2), scene coordinates (n, 3), world_from_cam, true-inlier mask (n,)."""
    rng = np.random.default_rng(seed)
    if grid:  # ACE's 8 px cell centres of a 480 x 640 image
        v, u = np.mgrid[0:480:8, 0:640:8] + 3.5
        pixels = np.stack([u.ravel(), v.ravel()], axis=1)[:n]
    else:
        pixels = rng.uniform([0, 0], [640, 480], size=(n, 2))
    depth = rng.uniform(1.0, 5.0, size=n)
    rays = np.concatenate([pixels, np.ones((n, 1))], axis=1) @ np.linalg.inv(K).T
    world_from_cam = geometry.make_pose(
        geometry.axis_angle_to_matrix(rng.normal(size=3)), rng.normal(scale=3.0, size=3))
    points = geometry.transform_points(world_from_cam, rays * depth[:, None])
    inlier = rng.random(n) >= outlier_ratio
    # Wrong predictions are other plausible scene points, not far-away junk.
    low, high = points.min(axis=0), points.max(axis=0)
    points[~inlier] = rng.uniform(low, high, size=(int((~inlier).sum()), 3))
    pixels = pixels + rng.normal(scale=noise_px, size=pixels.shape)
    return pixels, points, world_from_cam, inlier


def _check_failed(result: RansacResult, n: int, reason: str) -> None:
    assert not result.success
    assert reason in result.reason
    assert result.confidence == 0.0
    assert result.n_correspondences == n
    assert result.inlier_mask.shape == (n,) and result.inlier_mask.dtype == bool
    np.testing.assert_array_equal(result.world_from_cam, np.eye(4))
    np.testing.assert_array_equal(result.cam_from_world, np.eye(4))


@pytest.mark.parametrize('seed', SEEDS + [3, 4])
def test_exact_data_recovers_pose(seed: int) -> None:
    pixels, points, world_from_cam, _ = _scene(seed, 200)
    result = ransac_pnp(pixels, points, K, RansacSettings(), np.random.default_rng(seed))
    assert result.success and result.reason == ''
    np.testing.assert_allclose(result.world_from_cam, world_from_cam, atol=1e-4)
    np.testing.assert_allclose(result.cam_from_world @ result.world_from_cam, np.eye(4),
                               atol=1e-9)
    assert result.inlier_count == 200 and result.inlier_mask.all()
    assert 0.0 < result.confidence < 1.0
    assert result.score > 150


@pytest.mark.parametrize('seed', SEEDS)
@pytest.mark.parametrize('outlier_ratio', [0.5, 0.6, 0.7])
def test_noise_and_outliers(seed: int, outlier_ratio: float) -> None:
    pixels, points, world_from_cam, inlier = _scene(seed, 1000, outlier_ratio, noise_px=1.0)
    result = ransac_pnp(pixels, points, K, RansacSettings(), np.random.default_rng(seed))
    assert result.success, result.reason
    t_err, r_err = geometry.pose_error(result.world_from_cam, world_from_cam)
    assert t_err < 0.02 and r_err < 0.5, (t_err, r_err)
    found = result.inlier_mask
    assert (found & inlier).sum() >= 0.95 * inlier.sum()  # recall
    assert (found & ~inlier).sum() <= 0.05 * found.sum()  # precision
    assert result.inlier_count == found.sum()


def test_full_resolution_grid() -> None:
    pixels, points, world_from_cam, inlier = _scene(11, 4800, 0.5, noise_px=1.0, grid=True)
    result = ransac_pnp(pixels, points, K, RansacSettings(), np.random.default_rng(0))
    assert result.success
    t_err, r_err = geometry.pose_error(result.world_from_cam, world_from_cam)
    assert t_err < 0.02 and r_err < 0.5
    assert result.confidence > 0.9


@pytest.mark.parametrize('seed', SEEDS)
def test_garbage_fails(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pixels = rng.uniform([0, 0], [640, 480], size=(1000, 2))
    points = rng.uniform(-5, 5, size=(1000, 3))
    settings = RansacSettings(ransac_max_tries=20_000)
    result = ransac_pnp(pixels, points, K, settings, rng)
    _check_failed(result, 1000, 'too few inliers')
    assert result.inlier_count < settings.min_inliers


@pytest.mark.parametrize('n', [0, 1, 3])
def test_too_few_correspondences(n: int) -> None:
    pixels, points = np.full((n, 2), 100.0), np.ones((n, 3))
    result = ransac_pnp(pixels, points, K, RansacSettings(), np.random.default_rng(0))
    _check_failed(result, n, 'too few correspondences')


def test_non_finite_rows_are_ignored() -> None:
    pixels, points, world_from_cam, _ = _scene(5, 300)
    bad = np.zeros(300, dtype=bool)
    bad[::7] = True
    points[bad[:150].nonzero()[0]] = np.nan
    pixels[150:][bad[150:]] = np.inf
    result = ransac_pnp(pixels, points, K, RansacSettings(), np.random.default_rng(0))
    assert result.success
    np.testing.assert_allclose(result.world_from_cam, world_from_cam, atol=1e-4)
    assert result.n_correspondences == 300
    np.testing.assert_array_equal(result.inlier_mask, ~bad)

    points[:] = np.nan
    result = ransac_pnp(pixels, points, K, RansacSettings(), np.random.default_rng(0))
    _check_failed(result, 300, 'too few correspondences')


@pytest.mark.parametrize('layout', ['identical', 'collinear'])
def test_degenerate_points_fail(layout: str) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.uniform([0, 0], [640, 480], size=(100, 2))
    if layout == 'identical':
        points = np.tile([0.5, -1.0, 3.0], (100, 1))
    else:
        points = np.outer(rng.uniform(1, 5, 100), [0.2, 0.1, 1.0])
    settings = RansacSettings(ransac_max_tries=2000)
    result = ransac_pnp(pixels, points, K, settings, rng)
    _check_failed(result, 100, 'no valid hypothesis')


def test_deterministic_given_seed() -> None:
    pixels, points, _, _ = _scene(3, 500, 0.6, noise_px=1.0)
    a, b, c = (ransac_pnp(pixels, points, K, RansacSettings(), np.random.default_rng(seed))
               for seed in (42, 42, 43))
    np.testing.assert_array_equal(a.world_from_cam, b.world_from_cam)
    np.testing.assert_array_equal(a.inlier_mask, b.inlier_mask)
    assert a.score == b.score and a.confidence == b.confidence
    assert c.success  # another seed: another sample, same answer up to noise
    assert geometry.pose_error(a.world_from_cam, c.world_from_cam)[0] < 0.01


def test_without_refinement_hypothesis_is_close() -> None:
    pixels, points, world_from_cam, _ = _scene(2, 500, 0.5, noise_px=1.0)
    settings = RansacSettings(refinement_iterations=0)
    result = ransac_pnp(pixels, points, K, settings, np.random.default_rng(0))
    assert result.success
    t_err, r_err = geometry.pose_error(result.world_from_cam, world_from_cam)
    assert t_err < 0.2 and r_err < 3.0


def test_p3p_matches_opencv() -> None:
    rng = np.random.default_rng(0)
    m = 200
    points_cam = rng.uniform([-2, -2, 1], [2, 2, 6], size=(m, 3, 3))
    rays = points_cam / np.linalg.norm(points_cam, axis=2, keepdims=True)
    world_from_cam = geometry.make_pose(geometry.axis_angle_to_matrix([0.3, -0.5, 1.0]),
                                        [1.0, 2.0, 3.0])
    points_world = points_cam @ world_from_cam[:3, :3].T + world_from_cam[:3, 3]
    rotation, translation, sample = solve_p3p(rays, points_world)
    pixels = geometry.project(points_cam.reshape(-1, 3), K).reshape(m, 3, 2)
    n_matched = 0
    for i in range(m):
        _, rvecs, tvecs = cv2.solveP3P(points_world[i], pixels[i], K, None,
                                       flags=cv2.SOLVEPNP_P3P)
        ours = np.concatenate([rotation[sample == i].reshape(-1, 9),
                               translation[sample == i]], axis=1)
        assert len(ours) == len(rvecs)
        for rvec, tvec in zip(rvecs, tvecs):
            theirs = np.concatenate([cv2.Rodrigues(rvec)[0].ravel(), tvec.ravel()])
            n_matched += np.abs(ours - theirs).max(axis=1).min() < 1e-6
    assert n_matched >= 0.99 * len(sample)  # near-double roots may differ slightly


@pytest.mark.parametrize('field, value', [
    ('ransac_hypotheses', 0), ('inlier_threshold_px', 0.0), ('max_reprojection_px', 5.0),
    ('soft_inlier_sharpness', -1.0), ('refinement_iterations', -1),
    ('ransac_max_tries', 0), ('min_inliers', 3), ('min_depth', 0.0), ('max_depth', 0.05),
    ('confidence_inliers', 0.0)])
def test_settings_validation(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        RansacSettings(**{field: value})
    with pytest.raises(dataclasses.FrozenInstanceError):
        RansacSettings().ransac_hypotheses = 1  # type: ignore[misc]


def test_bad_inputs_raise() -> None:
    rng = np.random.default_rng(0)
    settings = RansacSettings()
    with pytest.raises(ValueError, match='points_world'):
        ransac_pnp(np.zeros((10, 2)), np.zeros((9, 3)), K, settings, rng)
    with pytest.raises(ValueError, match='pixels'):
        ransac_pnp(np.zeros((10, 3)), np.zeros((10, 3)), K, settings, rng)
    skewed = K.copy()
    skewed[0, 1] = 3.0
    for bad_K in (-K, skewed, K[:2]):
        with pytest.raises(ValueError, match='K'):
            ransac_pnp(np.zeros((10, 2)), np.zeros((10, 3)), bad_K, settings, rng)


def test_coherent_cells_prefer_inliers_on_a_grid() -> None:
    pixels, points, world_from_cam, inlier = _scene(5, 4800, 0.5, grid=True)
    # A smooth surface (a slanted wall) in place of _scene's random per-cell depths.
    rays = np.concatenate([pixels, np.ones((4800, 1))], axis=1) @ np.linalg.inv(K).T
    depth = 2.0 + pixels[:, :1] / 640.0
    points[inlier] = geometry.transform_points(world_from_cam, rays * depth)[inlier]
    grid = points.reshape(60, 80, 3)
    pool = coherent_cells(grid, 0.2)
    assert pool.shape == (4800,) and pool.sum() == 960
    # Outliers are scattered over the scene: their neighbours never agree with them.
    assert inlier[pool].mean() > 0.95 and inlier.mean() < 0.55
    np.testing.assert_array_equal(coherent_cells(grid, 1.0), np.ones(4800, dtype=bool))


def test_coherent_cells_skip_non_finite_and_validate() -> None:
    grid = np.zeros((4, 5, 3))
    grid[..., 0] = np.arange(5)
    grid[1, 2] = np.nan
    pool = coherent_cells(grid, 0.5)
    assert not pool[1 * 5 + 2] and pool.sum() == 10
    assert not coherent_cells(grid, 1.0)[1 * 5 + 2]
    for fraction in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match='fraction'):
            coherent_cells(grid, fraction)
    with pytest.raises(ValueError, match='points_grid'):
        coherent_cells(np.zeros((4, 5)), 0.5)


def test_sample_mask_limits_sampling_not_scoring() -> None:
    pixels, points, world_from_cam, inlier = _scene(7, 1000, 0.5, noise_px=0.5)
    settings = RansacSettings(ransac_max_tries=5_000)
    # Minimal sets from 20 inliers only: the pose is found and scored on all 1000.
    few = np.flatnonzero(inlier)[:20]
    mask = np.zeros(1000, dtype=bool)
    mask[few] = True
    result = ransac_pnp(pixels, points, K, settings, np.random.default_rng(0), sample_mask=mask)
    assert result.success and result.inlier_count > 0.9 * inlier.sum()
    # Minimal sets from outliers only: no consistent pose.
    result = ransac_pnp(pixels, points, K, settings, np.random.default_rng(0),
                        sample_mask=~inlier)
    assert not result.success
    # Fewer than 4 usable cells in the mask: drawn from all cells.
    mask = np.zeros(1000, dtype=bool)
    mask[:3] = True
    assert ransac_pnp(pixels, points, K, settings, np.random.default_rng(0),
                      sample_mask=mask).success
    with pytest.raises(ValueError, match='sample_mask'):
        ransac_pnp(pixels, points, K, settings, np.random.default_rng(0),
                   sample_mask=np.ones(999, dtype=bool))
