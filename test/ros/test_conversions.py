"""Message <-> numpy conversions: every image encoding case, intrinsics, poses, covariance."""

from __future__ import annotations

import array

from ace_ros.core import geometry
from ace_ros.ros import conversions
from ace_ros.ros.conversions import Rectifier, UnsupportedImageError
import cv2
from geometry_msgs.msg import Quaternion
import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo, Image, PointField

STAMP = conversions.ns_to_stamp(1_700_000_000_123_456_789)


def _rgb(height: int = 6, width: int = 5) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _raw(encoding: str, pixels: np.ndarray, pad: int = 0) -> Image:
    """An Image with `pad` extra bytes at the end of every row."""
    height = pixels.shape[0]
    rows = pixels.reshape(height, -1)
    padded = np.concatenate([rows, np.full((height, pad), 77, np.uint8)], axis=1)
    msg = Image(height=height, width=pixels.shape[1], encoding=encoding,
                step=padded.shape[1])
    msg.data = array.array('B', padded.tobytes())
    return msg


@pytest.mark.parametrize('pad', [0, 3])
def test_rgb8_bgr8_mono8_decode_with_and_without_row_padding(pad):
    rgb = _rgb()
    np.testing.assert_array_equal(conversions.image_to_rgb(_raw('rgb8', rgb, pad)), rgb)
    np.testing.assert_array_equal(
        conversions.image_to_rgb(_raw('bgr8', np.ascontiguousarray(rgb[:, :, ::-1]), pad)), rgb)
    grey = rgb[:, :, 0].copy()
    decoded = conversions.image_to_rgb(_raw('mono8', grey, pad))
    assert decoded.shape == (6, 5, 3) and decoded.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(decoded[:, :, channel], grey)


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'mono8'])
def test_round_trip_through_message(encoding):
    rgb = _rgb(8, 10)
    msg = conversions.rgb_to_image(rgb, STAMP, 'cam_optical', encoding)
    assert msg.header.frame_id == 'cam_optical' and msg.header.stamp == STAMP
    assert msg.step == 10 * (1 if encoding == 'mono8' else 3)
    back = conversions.image_to_rgb(msg)
    if encoding == 'mono8':
        np.testing.assert_array_equal(back[:, :, 0], cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    else:
        np.testing.assert_array_equal(back, rgb)


@pytest.mark.parametrize('encoding', ['mono16', '16UC1', '32FC1', 'rgba16', 'bayer_rggb8',
                                      'nv21', '8UC3', 'RGB8X'])
def test_other_encodings_are_refused_by_name(encoding):
    msg = Image(height=2, width=2, encoding=encoding, step=8)
    msg.data = array.array('B', bytes(16))
    with pytest.raises(UnsupportedImageError, match=f"'{encoding}' is not supported"):
        conversions.image_to_rgb(msg)


def test_inconsistent_sizes_are_refused():
    msg = _raw('rgb8', _rgb())
    msg.step = 14  # less than 5 * 3
    with pytest.raises(UnsupportedImageError, match='step 14 is smaller'):
        conversions.image_to_rgb(msg)
    short = _raw('rgb8', _rgb())
    short.data = short.data[:-20]
    with pytest.raises(UnsupportedImageError, match='holds 70 bytes'):
        conversions.image_to_rgb(short)
    with pytest.raises(UnsupportedImageError, match='empty'):
        conversions.image_to_rgb(Image(encoding='rgb8'))
    # A last row without its padding is accepted (some drivers send it that way).
    padded = _raw('rgb8', _rgb(), pad=4)
    padded.data = padded.data[:-4]
    np.testing.assert_array_equal(conversions.image_to_rgb(padded), _rgb())


def _info(d=(), model='plumb_bob', width=64, height=48) -> CameraInfo:
    K = [50.0, 0.0, 31.5, 0.0, 52.0, 23.5, 0.0, 0.0, 1.0]
    return CameraInfo(width=width, height=height, distortion_model=model, d=list(d), k=K,
                      p=[40.0, 0.0, 30.0, 0.0, 0.0, 41.0, 22.0, 0.0, 0.0, 0.0, 1.0, 0.0])


def test_camera_info_to_K_uses_K_or_P():
    np.testing.assert_allclose(conversions.camera_info_to_K(_info()),
                               [[50, 0, 31.5], [0, 52, 23.5], [0, 0, 1]])
    np.testing.assert_allclose(conversions.camera_info_to_K(_info(), image_is_rectified=True),
                               [[40, 0, 30], [0, 41, 22], [0, 0, 1]])
    with pytest.raises(ValueError, match='not a calibrated pinhole'):
        conversions.camera_info_to_K(CameraInfo(width=4, height=4))
    binned = _info()
    binned.binning_x = 2
    with pytest.raises(ValueError, match='binning 2 x 0'):
        conversions.camera_info_to_K(binned)


def test_rectifier_undistorts_and_refuses_unknown_models():
    rgb = _rgb(48, 64)
    identity = Rectifier.from_camera_info(_info(d=[0.0] * 5))
    assert identity.maps is None and identity.rectify(rgb) is rgb
    info = _info(d=[-0.3, 0.1, 0.0, 0.0, 0.0])
    rectifier = Rectifier.from_camera_info(info)
    out = rectifier.rectify(rgb)
    assert out.shape == rgb.shape and not np.array_equal(out, rgb)
    np.testing.assert_allclose(rectifier.K, conversions.camera_info_to_K(info))
    assert not rectifier.needs_update(info) and rectifier.needs_update(_info())
    assert Rectifier.from_camera_info(_info(d=[0.1, 0, 0, 0], model='equidistant')).maps
    # Already rectified images ignore D.
    assert Rectifier.from_camera_info(info, image_is_rectified=True).maps is None
    with pytest.raises(ValueError, match="model 'fancy_model'.*not supported"):
        Rectifier.from_camera_info(_info(d=[0.1], model='fancy_model'))
    with pytest.raises(ValueError, match="'plumb_bob' needs"):
        Rectifier.from_camera_info(_info(d=[0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match='image is 64 x 48 but camera_info describes 32 x 24'):
        Rectifier.from_camera_info(_info(width=32, height=24)).rectify(rgb)


def _random_pose(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return geometry.make_pose(geometry.axis_angle_to_matrix(rng.normal(size=3)),
                              rng.normal(size=3))


def test_pose_messages_round_trip():
    pose = _random_pose(1)
    msg = conversions.to_pose_stamped(pose, STAMP, 'map')
    assert msg.header.frame_id == 'map' and msg.header.stamp == STAMP
    np.testing.assert_allclose(conversions.pose_stamped_to_matrix(msg), pose, atol=1e-12)
    tf = conversions.to_transform_stamped(pose, STAMP, 'map', 'camera')
    assert tf.child_frame_id == 'camera'
    np.testing.assert_allclose(conversions.transform_stamped_to_matrix(tf), pose, atol=1e-12)
    odom = conversions.to_odometry(pose, STAMP, 'odom', 'base', np.eye(6) * 2)
    np.testing.assert_allclose(conversions.odometry_to_matrix(odom), pose, atol=1e-12)
    assert odom.child_frame_id == 'base' and odom.pose.covariance[7] == 2.0
    cov = np.diag([1.0, 2, 3, 4, 5, 6])
    with_cov = conversions.to_pose_with_covariance(pose, cov, STAMP, 'map')
    np.testing.assert_allclose(conversions.covariance_diagonal(with_cov.pose.covariance),
                               [1, 2, 3, 4, 5, 6])
    with pytest.raises(ValueError, match='two different, non-empty frames'):
        conversions.to_transform_stamped(pose, STAMP, 'map', '')
    nan_pose = pose.copy()
    nan_pose[0, 3] = np.nan
    with pytest.raises(ValueError, match='non-finite'):
        conversions.to_pose_stamped(nan_pose, STAMP, 'map')


@pytest.mark.parametrize('xyzw, message', [
    ((0.0, 0.0, 0.0, 0.0), 'all zeros'),
    ((float('nan'), 0.0, 0.0, 1.0), 'non-finite'),
    ((0.0, 0.0, 0.0, 2.0), 'not normalised'),
    ((0.5, 0.5, 0.5, 0.2), 'not normalised'),
])
def test_bad_quaternions_are_refused(xyzw, message):
    msg = conversions.to_pose_stamped(np.eye(4), STAMP, 'map')
    msg.pose.orientation = Quaternion(x=xyzw[0], y=xyzw[1], z=xyzw[2], w=xyzw[3])
    with pytest.raises(ValueError, match=message):
        conversions.pose_stamped_to_matrix(msg)


def test_slightly_denormalised_quaternion_is_accepted_and_normalised():
    q = conversions.quaternion_from_msg(Quaternion(x=0.0, y=0.0, z=0.0, w=1.004))
    np.testing.assert_allclose(q, [0, 0, 0, 1])


def test_covariance_grows_as_confidence_falls():
    sure = conversions.covariance_from_confidence(1.0)
    np.testing.assert_allclose(np.diag(sure), [0.05 ** 2] * 3 + [0.035 ** 2] * 3)
    unsure = conversions.covariance_from_confidence(0.1)
    np.testing.assert_allclose(np.diag(unsure), np.diag(sure) * 100)
    np.testing.assert_allclose(conversions.covariance_from_confidence(0.0),
                               np.eye(6) * conversions.MAX_VARIANCE)
    assert conversions.covariance_from_confidence(1e-9).max() == conversions.MAX_VARIANCE
    with pytest.raises(ValueError, match='finite'):
        conversions.covariance_from_confidence(float('nan'))


def _rotation_error(rotation: np.ndarray) -> np.ndarray:
    """Axis-angle of a rotation close to the identity (small-angle log)."""
    skew = (rotation - rotation.T) / 2
    return np.array([skew[2, 1], skew[0, 2], skew[1, 0]])


def test_offset_pose_covariance_matches_the_numerical_jacobian():
    rng = np.random.default_rng(3)
    map_from_cam = geometry.make_pose(geometry.axis_angle_to_matrix([0.3, -1.1, 0.7]),
                                      [2.0, -1.0, 0.5])
    cam_from_base = geometry.make_pose(geometry.axis_angle_to_matrix([-1.2, 0.1, 0.4]),
                                       [0.1, 0.4, -0.3])
    map_from_base = map_from_cam @ cam_from_base
    # Numerical Jacobian of the base pose error (parent axes) w.r.t. the camera pose error.
    eps = 1e-7
    jacobian = np.zeros((6, 6))
    for i in range(6):
        e = np.zeros(6)
        e[i] = eps
        perturbed = map_from_cam.copy()
        perturbed[:3, :3] = geometry.axis_angle_to_matrix(e[3:]) @ map_from_cam[:3, :3]
        perturbed[:3, 3] += e[:3]
        moved = perturbed @ cam_from_base
        jacobian[:3, i] = (moved[:3, 3] - map_from_base[:3, 3]) / eps
        jacobian[3:, i] = _rotation_error(moved[:3, :3] @ map_from_base[:3, :3].T) / eps
    a = rng.normal(size=(6, 6))
    covariance = a @ a.T + np.eye(6)  # anisotropic, correlated
    got = conversions.offset_pose_covariance(covariance, map_from_cam, cam_from_base)
    np.testing.assert_allclose(got, jacobian @ covariance @ jacobian.T, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got, got.T)


def test_offset_pose_covariance_of_the_node_covariance():
    cov = conversions.covariance_from_confidence(0.5)
    pose = geometry.make_pose(geometry.axis_angle_to_matrix([0.2, 0.4, -0.3]), [1, 2, 3])
    # No lever arm: the isotropic covariance is the same for any rotation of the mount.
    mount = geometry.make_pose(geometry.axis_angle_to_matrix([0, 1.5, 0]), [0, 0, 0])
    np.testing.assert_allclose(conversions.offset_pose_covariance(cov, pose, mount), cov,
                               atol=1e-15)
    # A lever arm of 1 m along the parent's x: y and z gain the rotation variance (small
    # angles: 1 rad of error moves the end by 1 m), x does not; position and rotation couple.
    lever = geometry.invert_pose(pose) @ geometry.make_pose(pose[:3, :3], pose[:3, 3]
                                                            + [1.0, 0, 0])
    got = conversions.offset_pose_covariance(cov, pose, lever)
    var_p, var_r = cov[0, 0], cov[3, 3]
    np.testing.assert_allclose(np.diag(got), [var_p, var_p + var_r, var_p + var_r] + [var_r] * 3)
    assert got[1, 5] == pytest.approx(var_r) and got[2, 4] == pytest.approx(-var_r)
    with pytest.raises(ValueError, match='covariance'):
        conversions.offset_pose_covariance(np.eye(3), pose, lever)


def test_stamps():
    assert conversions.stamp_to_ns(STAMP) == 1_700_000_000_123_456_789
    assert conversions.stamp_to_sec(STAMP) == pytest.approx(1_700_000_000.123456789)
    with pytest.raises(ValueError, match='negative'):
        conversions.ns_to_stamp(-1)


def test_point_cloud2_message_as_rviz_reads_it():
    points = np.array([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]])
    colors = np.array([[10, 20, 30], [255, 255, 255]], np.uint8)
    msg = conversions.to_point_cloud2(points, colors, STAMP, 'map')
    assert msg.header.frame_id == 'map' and msg.header.stamp == STAMP
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ('x', 0, PointField.FLOAT32, 1), ('y', 4, PointField.FLOAT32, 1),
        ('z', 8, PointField.FLOAT32, 1), ('rgb', 12, PointField.FLOAT32, 1)]
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, 2, 16, 32)
    assert msg.is_dense and not msg.is_bigendian
    rows = np.frombuffer(bytes(msg.data), dtype=[('xyz', '<f4', 3), ('rgb', '<u4')])
    np.testing.assert_array_equal(rows['xyz'], points)
    assert rows['rgb'].tolist() == [0x0A141E, 0xFFFFFF]
