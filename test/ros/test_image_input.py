"""Camera input with rclpy: rclpy and `rosbags` messages of the same content decode alike
(one decoder for the nodes and the bag reader)."""

from __future__ import annotations

import array

from ace_ros.core import geometry
from ace_ros.data import messages
from ace_ros.ros import conversions
import cv2
import numpy as np
import pytest
from rosbags.typesys import get_typestore, Stores
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

T = get_typestore(Stores.ROS2_KILTED).types
HEIGHT, WIDTH = 48, 64
STAMP_NS = 1_700_000_000_123_456_789
STAMP = conversions.ns_to_stamp(STAMP_NS)
K = np.array([[40.0, 0.0, 31.5], [0.0, 41.0, 23.5], [0.0, 0.0, 1.0]])


def _rgb() -> np.ndarray:
    rgb = np.random.default_rng(1).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    rgb[:, 1::2] = rgb[:, 0::2]  # one colour per pixel pair: yuv422 keeps it
    return rgb


def _header():
    return T['std_msgs/msg/Header'](stamp=T['builtin_interfaces/msg/Time'](
        sec=STAMP.sec, nanosec=STAMP.nanosec), frame_id='cam')


def _padded_image(encoding: str, pad: int):
    """The same padded image as an rclpy and as a rosbags message."""
    rows = messages.encode_rgb(_rgb(), encoding)
    rows = np.hstack([rows, np.full((HEIGHT, pad), 9, np.uint8)])
    ours = Image(height=HEIGHT, width=WIDTH, encoding=encoding, step=rows.shape[1])
    ours.header.stamp, ours.header.frame_id = STAMP, 'cam'
    ours.data = array.array('B', rows.tobytes())
    theirs = T['sensor_msgs/msg/Image'](header=_header(), height=HEIGHT, width=WIDTH,
                                        encoding=encoding, is_bigendian=0, step=rows.shape[1],
                                        data=rows.reshape(-1))
    return ours, theirs


def _png(rgb: np.ndarray) -> bytes:
    return cv2.imencode('.png', np.ascontiguousarray(rgb[..., ::-1]))[1].tobytes()


def _compressed(image_format: str, payload: bytes) -> CompressedImage:
    msg = CompressedImage(format=image_format)
    msg.header.stamp, msg.header.frame_id = STAMP, 'cam'
    msg.data = array.array('B', payload)
    return msg


@pytest.mark.parametrize('pad', [0, 3])
@pytest.mark.parametrize('encoding', messages.SUPPORTED_ENCODINGS)
def test_rclpy_and_rosbags_images_decode_identically(encoding, pad):
    ours, theirs = _padded_image(encoding, pad)
    got = conversions.decode_image(ours)
    np.testing.assert_array_equal(got, messages.decode_image(theirs))
    if encoding != 'mono8':
        assert np.abs(got.astype(int) - _rgb()).max() <= 3
    assert conversions.stamp_to_ns(ours.header.stamp) == messages.header_stamp_ns(theirs)


def test_rclpy_and_rosbags_compressed_images_decode_identically():
    rgb = _rgb()
    for image_format, payload in (('png', _png(rgb)), ('rgb8; jpeg compressed bgr8', cv2.imencode(
            '.jpg', np.ascontiguousarray(rgb[..., ::-1]))[1].tobytes())):
        ours = _compressed(image_format, payload)
        theirs = T['sensor_msgs/msg/CompressedImage'](header=_header(), format=image_format,
                                                      data=np.frombuffer(payload, np.uint8))
        np.testing.assert_array_equal(conversions.decode_image(ours),
                                      messages.decode_image(theirs))
    np.testing.assert_array_equal(conversions.decode_image(_compressed('png', _png(rgb))), rgb)


def test_rclpy_and_rosbags_camera_info_and_poses_agree():
    d = [-0.2, 0.05, 0.001, 0.0, 0.0]
    p = np.hstack([K, np.zeros((3, 1))]).reshape(-1)
    ours = CameraInfo(width=WIDTH, height=HEIGHT, distortion_model='plumb_bob', d=d,
                      k=K.reshape(-1).tolist(), p=p.tolist())
    theirs = T['sensor_msgs/msg/CameraInfo'](
        header=_header(), height=HEIGHT, width=WIDTH, distortion_model='plumb_bob',
        d=np.array(d), k=K.reshape(-1), r=np.eye(3).reshape(-1), p=p, binning_x=0, binning_y=0,
        roi=T['sensor_msgs/msg/RegionOfInterest'](x_offset=0, y_offset=0, height=0, width=0,
                                                  do_rectify=False))
    mine, bags = (conversions.Rectifier.from_camera_info(m) for m in (ours, theirs))
    assert mine.key == bags.key and not mine.needs_update(theirs)
    np.testing.assert_array_equal(mine.K, bags.K)
    np.testing.assert_array_equal(mine.rectify(_rgb()), bags.rectify(_rgb()))

    pose = geometry.make_pose(geometry.axis_angle_to_matrix([0.4, -1.0, 0.2]), [1.0, -2.0, 0.5])
    stamped = conversions.to_pose_stamped(pose, STAMP, 'map')
    q = stamped.pose.orientation
    bag_pose = T['geometry_msgs/msg/PoseStamped'](header=_header(), pose=T[
        'geometry_msgs/msg/Pose'](position=T['geometry_msgs/msg/Point'](
            x=stamped.pose.position.x, y=stamped.pose.position.y, z=stamped.pose.position.z),
            orientation=T['geometry_msgs/msg/Quaternion'](x=q.x, y=q.y, z=q.z, w=q.w)))
    np.testing.assert_array_equal(conversions.pose_stamped_to_matrix(stamped),
                                  messages.pose_stamped_to_matrix(bag_pose))
    np.testing.assert_allclose(messages.pose_stamped_to_matrix(bag_pose), pose, atol=1e-12)
