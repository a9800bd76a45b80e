"""Coverage: voxels of camera centres crossed with viewing directions, and saturation."""

from __future__ import annotations

import doctest

from ace_ros.core import coverage as coverage_module
from ace_ros.core.coverage import Coverage, fibonacci_directions
import numpy as np
import pytest


def look(centre, forward) -> np.ndarray:
    """A world_from_cam at `centre` whose optical axis (+z) points along `forward`."""
    z = np.asarray(forward, dtype=np.float64)
    z = z / np.linalg.norm(z)
    helper = np.array([0.0, 0.0, 1.0]) if abs(z[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    x = np.cross(helper, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([x, y, z], axis=1)
    pose[:3, 3] = centre
    return pose


def test_doctests():
    assert doctest.testmod(coverage_module).failed == 0


def test_turning_in_place_covers_every_direction_of_one_voxel():
    cov = Coverage(voxel_size_m=0.25, directions=20)
    # Look along each bin's own direction, then along many more (all already seen).
    for d in fibonacci_directions(20):
        assert cov.add(look([0.1, 0.1, 0.1], d)) == 1
    for d in fibonacci_directions(200):
        cov.add(look([0.1, 0.1, 0.1], d))
    s = cov.summary()
    assert (s.voxels, s.view_cells, s.keyframes) == (1, 20, 220)
    assert s.direction_share == 1.0 and s.path_length_m == 0.0
    centres, shares, colors = cov.voxel_cloud()
    np.testing.assert_allclose(centres, [[0.125, 0.125, 0.125]])
    assert shares.tolist() == [1.0] and colors.tolist() == [[0, 255, 0]]


def test_level_turn_reaches_about_half_the_directions():
    cov = Coverage()
    for a in np.linspace(0.0, 2 * np.pi, 360, endpoint=False):
        cov.add(look([0.0, 0.0, 0.0], [np.cos(a), np.sin(a), 0.0]))
    assert 0.4 <= cov.summary().direction_share <= 0.6


def test_straight_line_visits_many_voxels_with_one_direction():
    cov = Coverage(voxel_size_m=0.25)
    for x in np.arange(0.0, 5.0, 0.05):  # 100 poses, 5 m, looking along the motion
        cov.add(look([x + 0.01, 0.01, 0.01], [1.0, 0.0, 0.0]))
    s = cov.summary()
    assert s.voxels == 20 and s.view_cells == 20
    assert s.direction_share == pytest.approx(1 / 20)
    assert s.path_length_m == pytest.approx(4.95)
    _, shares, colors = cov.voxel_cloud()
    assert np.allclose(shares, 1 / 20) and (colors[:, 0] == 255).all()  # red-ish: one way


def test_repeated_frames_add_nothing():
    cov = Coverage()
    pose = look([1.0, 2.0, 0.5], [0.0, 1.0, 0.0])
    assert cov.add(pose) == 1
    for _ in range(10):
        assert cov.add(pose) == 0
    s = cov.summary()
    assert (s.voxels, s.view_cells, s.keyframes, s.path_length_m) == (1, 1, 11, 0.0)


def test_saturation_needs_a_full_window_without_new_cells():
    cov = Coverage(recent_keyframes=5)
    pose = look([0.0, 0.0, 0.0], [1.0, 0.0, 0.0])
    cov.add(pose)
    for _ in range(3):
        cov.add(pose)
    s = cov.summary()
    assert s.new_recent == 1 and s.recent_keyframes == 4 and not s.saturating
    cov.add(pose)  # window of 5: the first (new) pose is still in it
    assert not cov.summary().saturating
    cov.add(pose)  # now 5 repeats: saturating
    s = cov.summary()
    assert s.new_recent == 0 and s.recent_keyframes == 5 and s.saturating
    cov.add(look([3.0, 0.0, 0.0], [1.0, 0.0, 0.0]))  # somewhere new: not any more
    s = cov.summary()
    assert s.new_recent == 1 and not s.saturating and s.path_length_m == pytest.approx(3.0)


def test_empty_and_bad_input():
    s = Coverage().summary()
    assert (s.voxels, s.view_cells, s.direction_share, s.saturating) == (0, 0, 0.0, False)
    centres, shares, colors = Coverage().voxel_cloud()
    assert centres.shape == (0, 3) and shares.shape == (0,) and colors.shape == (0, 3)
    with pytest.raises(ValueError, match='voxel_size_m'):
        Coverage(voxel_size_m=0.0)
    with pytest.raises(ValueError, match='recent_keyframes'):
        Coverage(recent_keyframes=0)
    pose = np.eye(4)
    pose[0, 3] = np.nan
    with pytest.raises(ValueError, match='finite'):
        Coverage().add(pose)


def test_session_status_carries_the_keyframes_coverage(tmp_path):
    from ace_ros.core.config import mapping_config
    from ace_ros.core.online_mapping import OnlineMappingConfig, OnlineMappingSession
    from ace_ros.data.ace_layout import write_ace_scene

    cfg = mapping_config('tiny', image_height=32, samples_per_image=16, batch_size=64,
                         max_iterations=1, device='cpu', encoder='random:0')
    session = OnlineMappingSession(cfg, OnlineMappingConfig(
        map_path=str(tmp_path / 'room.ace'), min_translation_m=0.05, min_rotation_deg=5.0),
        write_scene=write_ace_scene)
    try:
        assert session.status().coverage.voxels == 0
        image = np.zeros((32, 40, 3), np.uint8)
        K = np.array([[30.0, 0, 20], [0, 30.0, 16], [0, 0, 1]])
        poses = [look([0.1, 0.1, 0.1], d) for d in ([1, 0, 0], [0, 1, 0], [-1, 0, 0])]
        poses += [poses[-1]]                          # standing still: no keyframe, no cell
        poses += [look([1.1, 0.1, 0.1], [-1, 0, 0])]  # 1 m away
        for i, pose in enumerate(poses):
            stamp = 1_000_000_000 * (i + 1)
            session.add_pose(stamp, pose)
            session.add_image(image, K, stamp)
        session.add_pose(1_000_000_000 * 10, poses[-1])  # the last image's pose is decided
        status = session.status()
        assert status.keyframes == 4 and status.counts['skipped_small_motion'] == 1
        c = status.coverage
        assert (c.keyframes, c.voxels, c.view_cells) == (4, 2, 4)
        assert c.path_length_m == pytest.approx(1.0)
        centres, shares, colors = session.coverage_cloud()
        assert centres.shape == (2, 3) and sorted(shares.tolist()) == [1 / 20, 3 / 20]
        assert np.isnan(status.median_error_px)  # not trained yet
        session.finish()
        status = session.status()  # the final training's latest median error, kept
        assert status.progress.stage == 'train' and np.isfinite(status.median_error_px)
        assert status.median_error_px == status.progress.median_error_px
        assert status.coverage == c  # training adds no coverage
    finally:
        session.close()
