"""Camera input with rclpy: rclpy and `rosbags` messages of the same content decode alike
(one decoder for the nodes and the bag reader), and both nodes' image_transport parameter
('compressed': CompressedImage on <image>/compressed, as image_transport names it)."""

from __future__ import annotations

import array
import logging

from ace_ros.core import geometry
from ace_ros.data import messages
from ace_ros.ros import conversions
import cv2
from geometry_msgs.msg import PoseStamped
import numpy as np
import pytest
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosbags.typesys import get_typestore, Stores
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

T = get_typestore(Stores.ROS2_KILTED).types
HEIGHT, WIDTH = 48, 64
STAMP_NS = 1_700_000_000_123_456_789
STAMP = conversions.ns_to_stamp(STAMP_NS)
K = np.array([[40.0, 0.0, 31.5], [0.0, 41.0, 23.5], [0.0, 0.0, 1.0]])
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


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


def _camera_info() -> CameraInfo:
    info = CameraInfo(width=WIDTH, height=HEIGHT, distortion_model='plumb_bob', d=[0.0] * 5,
                      k=K.reshape(-1).tolist(),
                      p=np.hstack([K, np.zeros((3, 1))]).reshape(-1).tolist())
    info.header.stamp = STAMP
    return info


def _image_subscription(node):
    subs = [s for s in node.subscriptions if s.msg_type in (Image, CompressedImage)]
    assert len(subs) == 1
    return subs[0].msg_type, subs[0].topic_name


def test_localization_node_image_transport(ros_context, make_node, spin_until):
    from ace_ros.ros.localization_node import LocalizationNode
    remap = ['--ros-args', '-r', 'image:=/cam/image_raw']
    raw = LocalizationNode(context=ros_context, cli_args=remap)
    try:
        assert _image_subscription(raw) == (Image, '/cam/image_raw')
    finally:
        raw.shutdown()
        raw.destroy_node()
    node = LocalizationNode(context=ros_context, cli_args=remap, parameter_overrides=[
        Parameter('image_transport', value='compressed')])
    try:
        assert _image_subscription(node) == (CompressedImage, '/cam/image_raw/compressed')
        frame = node._frame_from(_compressed('png', _png(_rgb())), _camera_info())
        np.testing.assert_array_equal(frame.image, _rgb())
        assert frame.stamp == pytest.approx(STAMP_NS / 1e9)
        # The subscription matches a CompressedImage publisher and hears it.
        feeder = make_node('compressed_feeder')
        publisher = feeder.create_publisher(CompressedImage, '/cam/image_raw/compressed',
                                            RELIABLE)
        assert spin_until([node, feeder], lambda: publisher.get_subscription_count() > 0, 10.0)
        publisher.publish(_compressed('png', _png(_rgb())))
        assert spin_until([node, feeder], lambda: node._counts['received'] >= 1, 10.0)
    finally:
        node.shutdown()
        node.destroy_node()
    with pytest.raises(ValueError, match=r"image_transport must be one of \['raw', "
                                         r"'compressed'\], got 'theora'"):
        LocalizationNode(context=ros_context, parameter_overrides=[
            Parameter('image_transport', value='theora')])


MAPPING = {'preset': 'tiny', 'device': 'cpu', 'encoder': 'random:0', 'image_height': HEIGHT,
           'samples_per_image': 64, 'batch_size': 256, 'min_translation_m': 0.0,
           'min_rotation_deg': 0.0, 'image_qos': 'reliable', 'image_transport': 'compressed',
           'idle_timeout_s': 0.0, 'exit_when_done': False}


def test_mapping_node_takes_compressed_images(ros_context, make_node, spin_until, tmp_path):
    from ace_ros.ros.mapping_node import MappingNode
    overrides = {**MAPPING, 'map_path': str(tmp_path / 'room.ace')}
    node = MappingNode(context=ros_context, cli_args=['--ros-args', '-r', 'image:=/cam/img'],
                       parameter_overrides=[Parameter(n, value=v) for n, v in overrides.items()])
    try:
        assert _image_subscription(node) == (CompressedImage, '/cam/img/compressed')
        node._on_camera_info(_camera_info())
        node._on_image(_compressed('jpeg', b'not a jpeg'))
        counts = node.session.status().counts
        assert counts['image_invalid'] == 1, counts
        feeder = make_node('compressed_mapping_feeder')
        publisher = feeder.create_publisher(CompressedImage, '/cam/img/compressed', RELIABLE)
        poses = feeder.create_publisher(PoseStamped, 'pose', RELIABLE)
        assert spin_until([node, feeder], lambda: publisher.get_subscription_count() > 0
                          and poses.get_subscription_count() > 0, 10.0)
        poses.publish(conversions.to_pose_stamped(np.eye(4), STAMP, 'map'))
        publisher.publish(_compressed('png', _png(_rgb())))
        assert spin_until([node, feeder],
                          lambda: node.session.status().counts['images'] >= 2, 10.0)
        counts = node.session.status().counts
        assert counts['image_invalid'] == 1 and counts.get('image_unsupported', 0) == 0, counts
    finally:
        node.destroy_node()
    handlers = list(logging.getLogger('ace_ros').handlers)
    try:
        with pytest.raises(ValueError, match=r"image_transport must be one of \['raw', "
                                             r"'compressed'\], got 'x'"):
            MappingNode(context=ros_context, parameter_overrides=[
                Parameter(n, value=v) for n, v in {**overrides, 'image_transport': 'x'}.items()])
    finally:  # the refused node's log bridge stays attached
        for handler in set(logging.getLogger('ace_ros').handlers) - set(handlers):
            logging.getLogger('ace_ros').removeHandler(handler)
