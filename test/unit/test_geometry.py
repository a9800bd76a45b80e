"""Tests for ace_ros.core.geometry: quaternions, poses, intrinsics, projection."""

from __future__ import annotations

import doctest
import math

from ace_ros.core import geometry
import numpy as np
import pytest


def _random_quaternions(n: int, seed: int = 0) -> np.ndarray:
    """(n, 4) unit xyzw quaternions, uniform on SO(3), canonical sign w >= 0."""
    q = np.random.default_rng(seed).normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q[q[:, 3] < 0] *= -1
    return q


def _random_rotations(n: int, seed: int = 0) -> np.ndarray:
    """(n, 3, 3) rotations from random axis-angle vectors (angles up to ~pi)."""
    rng = np.random.default_rng(seed)
    axes = rng.normal(size=(n, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = rng.uniform(0.0, math.pi, size=n)
    return np.stack([geometry.axis_angle_to_matrix(a * t) for a, t in zip(axes, angles)])


def _random_pose(rng: np.random.Generator) -> np.ndarray:
    rotation = geometry.axis_angle_to_matrix(rng.normal(size=3))
    return geometry.make_pose(rotation, rng.uniform(-3, 3, size=3))


def test_doctests_pass():
    result = doctest.testmod(geometry, verbose=False)
    assert result.failed == 0
    assert result.attempted >= 5


def test_quaternion_to_matrix_gives_rotations():
    for q in _random_quaternions(200):
        r = geometry.quaternion_to_matrix(q)
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(r) == pytest.approx(1.0, abs=1e-12)


def test_quaternion_matrix_quaternion_round_trip():
    for q in _random_quaternions(500, seed=1):
        back = geometry.matrix_to_quaternion(geometry.quaternion_to_matrix(q))
        np.testing.assert_allclose(back, q, atol=1e-10)
        assert back[3] >= 0


def test_matrix_quaternion_matrix_round_trip_and_sign():
    rotations = _random_rotations(500, seed=2)
    # Near-180-degree rotations exercise every branch of Shepperd's method.
    rotations = np.concatenate([rotations, [np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]),
                                            np.diag([-1.0, -1, 1])]])
    for r in rotations:
        q = geometry.matrix_to_quaternion(r)
        assert np.linalg.norm(q) == pytest.approx(1.0, abs=1e-12)
        assert q[3] >= 0
        np.testing.assert_allclose(geometry.quaternion_to_matrix(q), r, atol=1e-10)


def test_quaternion_sign_and_norm_do_not_matter():
    q = _random_quaternions(1, seed=3)[0]
    r = geometry.quaternion_to_matrix(q)
    np.testing.assert_allclose(geometry.quaternion_to_matrix(-q), r, atol=1e-12)
    np.testing.assert_allclose(geometry.quaternion_to_matrix(5.0 * q), r, atol=1e-12)


def test_quaternion_is_xyzw():
    s = math.sin(math.pi / 4)
    rz90 = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])  # x axis -> y axis
    np.testing.assert_allclose(geometry.quaternion_to_matrix([0, 0, s, s]), rz90, atol=1e-12)
    np.testing.assert_allclose(geometry.matrix_to_quaternion(rz90), [0, 0, s, s], atol=1e-12)
    # 90 deg about x: y axis -> z axis
    rx90 = geometry.quaternion_to_matrix([s, 0, 0, s])
    np.testing.assert_allclose(rx90 @ [0, 1, 0], [0, 0, 1], atol=1e-12)


@pytest.mark.parametrize('quat', [[0, 0, 0, 0], [0, 0, np.nan, 1], [np.inf, 0, 0, 1],
                                  [1e-12, 0, 0, 0]])
def test_bad_quaternion_raises(quat):
    with pytest.raises(ValueError, match='quaternion'):
        geometry.quaternion_to_matrix(quat)
    with pytest.raises(ValueError, match='quaternion'):
        geometry.pose_from_translation_quaternion([0, 0, 0], quat)


def test_bad_translation_raises():
    with pytest.raises(ValueError, match='translation'):
        geometry.pose_from_translation_quaternion([0, np.nan, 0], [0, 0, 0, 1])


def test_pose_translation_quaternion_round_trip():
    rng = np.random.default_rng(4)
    for _ in range(50):
        pose = _random_pose(rng)
        t, q = geometry.pose_to_translation_quaternion(pose)
        np.testing.assert_allclose(geometry.pose_from_translation_quaternion(t, q), pose,
                                   atol=1e-12)


def test_invert_pose():
    rng = np.random.default_rng(5)
    for _ in range(50):
        world_from_cam = _random_pose(rng)
        cam_from_world = geometry.invert_pose(world_from_cam)
        np.testing.assert_allclose(cam_from_world @ world_from_cam, np.eye(4), atol=1e-12)
        np.testing.assert_allclose(cam_from_world, np.linalg.inv(world_from_cam), atol=1e-12)


def test_invert_pose_by_hand():
    world_from_cam = geometry.make_pose(np.diag([1.0, -1, -1]), [1.0, 2.0, 3.0])
    expected = geometry.make_pose(np.diag([1.0, -1, -1]), [-1.0, 2.0, 3.0])
    np.testing.assert_allclose(geometry.invert_pose(world_from_cam), expected, atol=1e-15)


def test_pose_error_known_values():
    rz30 = geometry.axis_angle_to_matrix([0, 0, math.radians(30)])
    est = geometry.make_pose(rz30, [1.0, 2.0, 3.0])
    gt = geometry.make_pose(np.eye(3), [1.0, 2.0, 3.5])
    t_err, r_err = geometry.pose_error(est, gt)
    assert t_err == pytest.approx(0.5)
    assert r_err == pytest.approx(30.0)


def test_pose_error_is_between_camera_centres():
    # Same rotation, different translation column: the error is the distance between
    # the camera centres (world_from_cam[:3, 3]), independent of the rotation.
    rng = np.random.default_rng(6)
    rotation = geometry.axis_angle_to_matrix(rng.normal(size=3))
    est = geometry.make_pose(rotation, [0.0, 0.0, 0.0])
    gt = geometry.make_pose(rotation, [0.0, 0.3, 0.4])
    assert geometry.pose_error(est, gt) == pytest.approx((0.5, 0.0), abs=1e-5)


def test_rotation_angle_deg():
    for angle in [0.0, 1.0, 45.0, 90.0, 179.0, 180.0]:
        r = geometry.axis_angle_to_matrix(np.array([1.0, 2.0, -0.5]) / math.sqrt(5.25)
                                          * math.radians(angle))
        assert geometry.rotation_angle_deg(r) == pytest.approx(angle, abs=1e-5)


def test_slerp_endpoints():
    rng = np.random.default_rng(7)
    a, b = _random_pose(rng), _random_pose(rng)
    np.testing.assert_allclose(geometry.slerp_pose(a, b, 0.0), a, atol=1e-10)
    np.testing.assert_allclose(geometry.slerp_pose(a, b, 1.0), b, atol=1e-10)


@pytest.mark.parametrize('angle_deg', [0.01, 10.0, 120.0, 200.0])
def test_slerp_midpoint_is_half_angle(angle_deg):
    axis = np.array([0.6, 0.0, 0.8])
    start = geometry.axis_angle_to_matrix([0.3, -0.2, 0.1])
    a = geometry.make_pose(start, [0.0, 0.0, 0.0])
    b = geometry.make_pose(geometry.axis_angle_to_matrix(axis * math.radians(angle_deg))
                           @ start, [2.0, -4.0, 6.0])
    mid = geometry.slerp_pose(a, b, 0.5)
    np.testing.assert_allclose(mid[:3, 3], [1.0, -2.0, 3.0])
    # The short way round: 200 deg one way is 160 deg the other.
    total = angle_deg if angle_deg <= 180 else 360 - angle_deg
    assert geometry.pose_error(a, mid)[1] == pytest.approx(total / 2, abs=1e-4)
    assert geometry.pose_error(mid, b)[1] == pytest.approx(total / 2, abs=1e-4)


def test_slerp_quarter_rotation_about_fixed_axis():
    a = np.eye(4)
    b = geometry.make_pose(geometry.axis_angle_to_matrix([0, 0, math.radians(80)]), [0, 0, 0])
    quarter = geometry.slerp_pose(a, b, 0.25)
    expected = geometry.axis_angle_to_matrix([0, 0, math.radians(20)])
    np.testing.assert_allclose(quarter[:3, :3], expected, atol=1e-10)


def test_scale_intrinsics_pixel_centre_convention():
    K = np.array([[500.0, 2.0, 319.5], [0.0, 510.0, 239.5], [0.0, 0.0, 1.0]])
    scaled = geometry.scale_intrinsics(K, 0.5, 0.25)
    np.testing.assert_allclose(scaled, [[250.0, 1.0, 159.5], [0.0, 127.5, 59.5],
                                        [0.0, 0.0, 1.0]])
    # The input is not modified.
    assert K[0, 0] == 500.0


def test_scale_intrinsics_keeps_image_centre_and_edges():
    # A centred principal point stays centred: (W - 1) / 2 -> (sW - 1) / 2.
    K = geometry.intrinsics_from_focal(100.0, 40, 30)
    np.testing.assert_allclose(geometry.scale_intrinsics(K, 2.0, 2.0),
                               geometry.intrinsics_from_focal(200.0, 80, 60))
    # Any ray lands at the same place relative to the image edges (-0.5 and W - 0.5).
    rng = np.random.default_rng(8)
    points = rng.uniform([-1, -1, 1], [1, 1, 3], size=(20, 3))
    scale_x, scale_y = 0.3, 1.7
    uv = geometry.project(points, K)
    uv_scaled = geometry.project(points, geometry.scale_intrinsics(K, scale_x, scale_y))
    np.testing.assert_allclose(uv_scaled, (uv + 0.5) * [scale_x, scale_y] - 0.5, atol=1e-10)


def test_scale_intrinsics_checks_shape():
    with pytest.raises(ValueError, match=r'K must have shape \(3, 3\)'):
        geometry.scale_intrinsics(np.eye(4), 1.0, 1.0)


def test_check_shape():
    geometry.check_shape(np.zeros((5, 3)), (None, 3), 'points')
    with pytest.raises(ValueError, match=r'points must have shape \(None, 3\), got \(5, 2\)'):
        geometry.check_shape(np.zeros((5, 2)), (None, 3), 'points')
    with pytest.raises(ValueError):
        geometry.check_shape(np.zeros((5, 3, 1)), (None, 3), 'points')


def test_project_by_hand():
    K = np.array([[100.0, 0, 50], [0, 200, 40], [0, 0, 1]])
    points = np.array([[0.0, 0.0, 2.0], [1.0, -1.0, 2.0], [0.5, 0.25, 0.5]])
    np.testing.assert_allclose(geometry.project(points, K),
                               [[50.0, 40.0], [100.0, -60.0], [150.0, 140.0]])


def test_transform_points_by_hand_and_inverse():
    pose = geometry.make_pose(geometry.axis_angle_to_matrix([0, 0, math.pi / 2]), [1, 2, 3])
    points = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 5.0]])
    moved = geometry.transform_points(pose, points)
    np.testing.assert_allclose(moved, [[1.0, 3.0, 3.0], [0.0, 2.0, 8.0]], atol=1e-12)
    np.testing.assert_allclose(geometry.transform_points(geometry.invert_pose(pose), moved),
                               points, atol=1e-12)


def test_project_world_point_through_pose():
    rng = np.random.default_rng(9)
    world_from_cam = _random_pose(rng)
    K = geometry.intrinsics_from_focal(300.0, 64, 48)
    points_cam = rng.uniform([-1, -1, 1], [1, 1, 4], size=(10, 3))
    points_world = geometry.transform_points(world_from_cam, points_cam)
    uv = geometry.project(
        geometry.transform_points(geometry.invert_pose(world_from_cam), points_world), K)
    np.testing.assert_allclose(uv, geometry.project(points_cam, K), atol=1e-9)
