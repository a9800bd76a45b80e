"""ROS bags as sources and `ace-ros export-bag` (no ROS runtime: the `rosbags` library only)."""

from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import get_typestore, Stores

from ace_ros import cli
from ace_ros.bag_tools import ExportOptions, export_bag, OPTICAL_MOUNT, synthetic_frames
from ace_ros.core.geometry import invert_pose, pose_to_translation_quaternion, slerp_pose
from ace_ros.core.mapfile import load_map
from ace_ros.core.types import Frame
from ace_ros.data.base import block_split, Undistorter
from ace_ros.data.rosbag_source import RosbagSource
from ace_ros.data.sources import detect_format, open_source, SEQUENCE_SPLIT_BLOCK
from ace_ros.data.synthetic import SyntheticSceneConfig

HEIGHT, WIDTH = 120, 160
SCENE = SyntheticSceneConfig(seed=1, width=WIDTH, height=HEIGHT, focal=525 * HEIGHT / 480,
                             n_train=12, n_test=0, texel_size=0.01)
SPEC = (f'synthetic:seed=1,width={WIDTH},height={HEIGHT},focal={525 * HEIGHT / 480},'
        'n_train=12,n_test=0,texel_size=0.01')
TS = get_typestore(Stores.ROS2_KILTED)
T = TS.types


@pytest.fixture(scope='module')
def frames():
    return list(synthetic_frames(SCENE, 'train'))


def _expected_stamp(index: int) -> float:
    return 1.0 + index / 30.0  # export's default for unstamped sources: 1 s + i / 30 Hz


def _check_round_trip(source, frames, tolerance=1e-12):
    assert len(source) == len(frames)
    for index, (got, want) in enumerate(zip(source, frames)):
        np.testing.assert_array_equal(got.image, want.image)
        np.testing.assert_array_equal(got.K, want.K)
        np.testing.assert_allclose(got.world_from_cam, want.world_from_cam, rtol=0,
                                   atol=tolerance)
        assert abs(got.stamp - _expected_stamp(index)) < 1e-9
        assert got.name == f'{got.stamp:.9f}'


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3', 'ros1'])
def test_export_and_read_back_exactly_via_pose_topic_and_tf(frames, tmp_path, storage):
    path = tmp_path / ('bag.bag' if storage == 'ros1' else 'bag')
    report = export_bag(frames, path, ExportOptions(storage=storage), stamped=False)
    assert (report.frames, report.posed_frames) == (12, 12)
    assert detect_format(path) == 'rosbag'
    via_topic = open_source(path)  # the only PoseStamped topic is picked
    assert via_topic.pose_topic == '/camera/pose' and via_topic.pose_frame == 'map'
    _check_round_trip(via_topic, frames)
    via_tf = RosbagSource(path, world_frame='map')
    assert via_tf.camera_frame == 'camera_optical_frame'
    _check_round_trip(via_tf, frames)


def test_tf_chain_through_a_static_mount(frames, tmp_path):
    path = tmp_path / 'bag'
    export_bag(frames, path, ExportOptions(base_frame='base_link', pose_topic=''),
               stamped=False)
    with AnyReader([path]) as reader:
        topics = {name: info.msgcount for name, info in reader.topics.items()}
        static = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages(
            [c for c in reader.connections if c.topic == '/tf_static'])]
    assert topics == {'/camera/image_raw': 12, '/camera/camera_info': 12, '/tf': 12,
                      '/tf_static': 1}
    mount = static[0].transforms[0]
    assert (mount.header.frame_id, mount.child_frame_id) == ('base_link',
                                                             'camera_optical_frame')
    source = open_source(path, world_frame='map')
    _check_round_trip(source, frames, tolerance=1e-9)  # two composed transforms
    # The body frame is the optical frame turned to x forward, z up.
    base = source.poses[0] @ invert_pose(OPTICAL_MOUNT)
    np.testing.assert_allclose(base[:3, :3] @ [1, 0, 0], frames[0].world_from_cam[:3, 2],
                               atol=1e-9)


def test_split_is_the_sequence_block_split(frames, tmp_path):
    path = tmp_path / 'bag'
    export_bag(frames * 3, path, ExportOptions(), stamped=False)
    for parity, split in enumerate(('train', 'test')):
        subset = open_source(path, split=split)
        assert subset.indices == block_split(36, SEQUENCE_SPLIT_BLOCK, parity)
        assert subset.names == [open_source(path).names[i] for i in subset.indices]


# ---- hand-written bags for what export never writes ---------------------------------------

def _header(stamp_ns: int, frame_id: str):
    return T['std_msgs/msg/Header'](
        stamp=T['builtin_interfaces/msg/Time'](sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9),
        frame_id=frame_id)


def _image(frame: Frame, stamp_ns: int, encoding='rgb8', pad=0):
    pixels = {'rgb8': frame.image, 'bgr8': frame.image[..., ::-1],
              'mono8': frame.image[..., :1], 'mono16': frame.image[..., :2]}[encoding]
    rows = pixels.reshape(HEIGHT, -1)
    rows = np.hstack([rows, np.full((HEIGHT, pad), 7, np.uint8)])
    return T['sensor_msgs/msg/Image'](
        header=_header(stamp_ns, 'cam'), height=HEIGHT, width=WIDTH, encoding=encoding,
        is_bigendian=0, step=rows.shape[1], data=rows.reshape(-1))


def _camera_info(K, stamp_ns: int, d=(0.0,) * 5):
    return T['sensor_msgs/msg/CameraInfo'](
        header=_header(stamp_ns, 'cam'), height=HEIGHT, width=WIDTH,
        distortion_model='plumb_bob', d=np.array(d, float), k=K.reshape(-1),
        r=np.eye(3).reshape(-1), p=np.hstack([K, np.zeros((3, 1))]).reshape(-1), binning_x=0,
        binning_y=0, roi=T['sensor_msgs/msg/RegionOfInterest'](
            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def _pose(world_from_x):
    t, q = pose_to_translation_quaternion(world_from_x)
    return T['geometry_msgs/msg/Pose'](
        position=T['geometry_msgs/msg/Point'](x=t[0], y=t[1], z=t[2]),
        orientation=T['geometry_msgs/msg/Quaternion'](x=q[0], y=q[1], z=q[2], w=q[3]))


def _odometry(world_from_x, stamp_ns: int, child: str):
    covariance = T['geometry_msgs/msg/PoseWithCovariance'](pose=_pose(world_from_x),
                                                           covariance=np.zeros(36))
    twist = T['geometry_msgs/msg/TwistWithCovariance'](
        twist=T['geometry_msgs/msg/Twist'](linear=T['geometry_msgs/msg/Vector3'](x=0, y=0, z=0),
                                           angular=T['geometry_msgs/msg/Vector3'](x=0, y=0, z=0)),
        covariance=np.zeros(36))
    return T['nav_msgs/msg/Odometry'](header=_header(stamp_ns, 'odom'), child_frame_id=child,
                                      pose=covariance, twist=twist)


def _tf(parent_from_child, stamp_ns: int, parent: str, child: str):
    t, q = pose_to_translation_quaternion(parent_from_child)
    return T['tf2_msgs/msg/TFMessage'](transforms=[T['geometry_msgs/msg/TransformStamped'](
        header=_header(stamp_ns, parent), child_frame_id=child,
        transform=T['geometry_msgs/msg/Transform'](
            translation=T['geometry_msgs/msg/Vector3'](x=t[0], y=t[1], z=t[2]),
            rotation=T['geometry_msgs/msg/Quaternion'](x=q[0], y=q[1], z=q[2], w=q[3])))])


def _write(path, topics):
    """topics: {topic: (msgtype, [(stamp_ns, message), ...])} -> a rosbag2 (mcap) folder."""
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        for topic, (msgtype, messages) in topics.items():
            connection = writer.add_connection(topic, msgtype, typestore=TS)
            for stamp_ns, msg in messages:
                writer.write(connection, stamp_ns, TS.serialize_cdr(msg, msgtype))
    return path


def _camera_topics(frames, stamps, encoding='rgb8', pad=0, d=(0.0,) * 5):
    return {'/cam/image': ('sensor_msgs/msg/Image',
                           [(s, _image(f, s, encoding, pad)) for f, s in zip(frames, stamps)]),
            '/cam/info': ('sensor_msgs/msg/CameraInfo', [(stamps[0], _camera_info(
                frames[0].K, stamps[0], d))])}


STAMPS = [10**9 * 5 + i * 33_333_333 for i in range(12)]


def test_odometry_pose_topic_chained_to_the_camera_through_tf(frames, tmp_path):
    base_from_cam = OPTICAL_MOUNT.copy()
    base_from_cam[:3, 3] = [0.1, 0.0, 0.3]
    topics = _camera_topics(frames, STAMPS)
    topics['/odom'] = ('nav_msgs/msg/Odometry', [
        (s, _odometry(f.world_from_cam @ invert_pose(base_from_cam), s, 'base_link'))
        for f, s in zip(frames, STAMPS)])
    topics['/tf_static'] = ('tf2_msgs/msg/TFMessage',
                            [(STAMPS[0], _tf(base_from_cam, STAMPS[0], 'base_link', 'cam'))])
    source = RosbagSource(_write(tmp_path / 'bag', topics))
    assert source.pose_topic == '/odom' and source.pose_frame == 'odom'
    for got, want in zip(source, frames):
        np.testing.assert_allclose(got.world_from_cam, want.world_from_cam, atol=1e-9)


def test_odometry_of_the_camera_itself_needs_no_tf(frames, tmp_path):
    topics = _camera_topics(frames, STAMPS)
    topics['/odom'] = ('nav_msgs/msg/Odometry', [(s, _odometry(f.world_from_cam, s, 'cam'))
                                                 for f, s in zip(frames, STAMPS)])
    source = RosbagSource(_write(tmp_path / 'bag', topics), pose_topic='/odom')
    np.testing.assert_allclose(source[3].world_from_cam, frames[3].world_from_cam, atol=1e-12)


def test_poses_interpolated_within_the_gap_and_missing_frames_counted(frames, tmp_path,
                                                                      caplog):
    # Poses at the odd image stamps only, 66.7 ms apart, and none after the 8th image.
    topics = _camera_topics(frames, STAMPS)
    pose_stamped = T['geometry_msgs/msg/PoseStamped']
    topics['/pose'] = ('geometry_msgs/msg/PoseStamped', [
        (s, pose_stamped(header=_header(s, 'world'), pose=_pose(f.world_from_cam)))
        for f, s in list(zip(frames, STAMPS))[1:9:2]])
    path = _write(tmp_path / 'bag', topics)
    with caplog.at_level(logging.WARNING):
        strict = RosbagSource(path, max_pose_gap_s=0.05)
    # Exact stamps (1, 3, 5, 7) match; the even ones between fall in a 66.7 ms gap.
    assert [p is not None for p in strict.poses] == [i in (1, 3, 5, 7) for i in range(12)]
    assert strict.frames_without_pose == 8
    assert '8 of 12 frames have no pose' in caplog.text
    loose = RosbagSource(path, max_pose_gap_s=0.1)
    assert loose.frames_without_pose == 5  # 0 (before the first) and 8..11 (after the last)
    # Frame 2 is stamped halfway between the poses of frames 1 and 3.
    np.testing.assert_allclose(loose.poses[2], slerp_pose(
        frames[1].world_from_cam, frames[3].world_from_cam, 0.5), atol=1e-9)
    assert loose[0].world_from_cam is None  # never guessed


@pytest.mark.parametrize('encoding,pad', [('bgr8', 0), ('mono8', 0), ('rgb8', 5)])
def test_encodings_and_padded_rows(frames, tmp_path, encoding, pad):
    source = RosbagSource(_write(tmp_path / 'bag', _camera_topics(frames, STAMPS, encoding, pad)))
    image = source[4].image
    want = frames[4].image if encoding != 'mono8' else np.repeat(frames[4].image[..., :1], 3, 2)
    np.testing.assert_array_equal(image, want)
    assert not source.has_poses and source[4].world_from_cam is None


def test_unsupported_encoding_is_refused_naming_it(frames, tmp_path):
    path = _write(tmp_path / 'bag', _camera_topics(frames, STAMPS, 'mono16'))
    with pytest.raises(ValueError, match=r"/cam/image: image encoding 'mono16' is not supp"):
        RosbagSource(path)


def test_compressed_png_images(frames, tmp_path):
    topics = _camera_topics(frames, STAMPS)
    topics['/cam/image'] = ('sensor_msgs/msg/CompressedImage', [
        (s, T['sensor_msgs/msg/CompressedImage'](
            header=_header(s, 'cam'), format='rgb8; png compressed bgr8',
            data=np.frombuffer(cv2.imencode('.png', f.image[..., ::-1])[1], np.uint8)))
        for f, s in zip(frames, STAMPS)])
    source = RosbagSource(_write(tmp_path / 'bag', topics))
    np.testing.assert_array_equal(source[2].image, frames[2].image)


def test_distortion_is_removed_as_for_tum(frames, tmp_path):
    d = (0.1, -0.05, 0.001, 0.0, 0.0)
    source = RosbagSource(_write(tmp_path / 'bag', _camera_topics(frames, STAMPS, d=d)))
    np.testing.assert_array_equal(source[1].image, Undistorter(frames[1].K, d)(frames[1].image))
    assert not np.array_equal(source[1].image, frames[1].image)


def test_topic_detection_errors_list_the_candidates(frames, tmp_path):
    topics = _camera_topics(frames, STAMPS)
    topics['/cam2/image'] = topics['/cam/image']
    for name in ('/a', '/b'):
        topics[name] = ('geometry_msgs/msg/PoseStamped', [(STAMPS[0], T[
            'geometry_msgs/msg/PoseStamped'](header=_header(STAMPS[0], 'w'),
                                             pose=_pose(np.eye(4))))])
    path = _write(tmp_path / 'bag', topics)
    with pytest.raises(ValueError, match=r"2 image topics \['/cam/image', '/cam2/image'\]; "
                                         r'choose one with --image-topic'):
        RosbagSource(path)
    with pytest.raises(ValueError, match=r"2 pose topics \['/a', '/b'\]; choose one"):
        RosbagSource(path, image_topic='/cam2/image')
    with pytest.raises(ValueError, match=r'/nope; the bag has: /a \(geometry_msgs/msg/Pose'):
        RosbagSource(path, image_topic='/nope')
    with pytest.raises(ValueError, match=r'/cam/info is sensor_msgs/msg/CameraInfo, expected'):
        RosbagSource(path, image_topic='/cam/image', pose_topic='/cam/info')
    assert RosbagSource(path, image_topic='/cam2/image', pose_topic='/b').pose_topic == '/b'


def test_a_bag_without_camera_topics_lists_what_it_has(tmp_path):
    path = _write(tmp_path / 'bag', {'/chatter': ('std_msgs/msg/String', [
        (1, T['std_msgs/msg/String'](data='hi'))])})
    with pytest.raises(ValueError, match=r'no image topic .*; the bag has: /chatter '
                                         r'\(std_msgs/msg/String\)'):
        open_source(path)


def test_tf_without_the_chain_and_rosbag2_without_metadata(frames, tmp_path):
    path = tmp_path / 'bag'
    export_bag(frames[:2], path, ExportOptions(), stamped=False)
    with pytest.raises(ValueError, match=r"TF has no chain between 'odom' and "
                                         r"'camera_optical_frame'"):
        RosbagSource(path, world_frame='odom')
    (path / 'metadata.yaml').unlink()
    assert detect_format(path) == 'rosbag'
    with pytest.raises(ValueError, match='without .*metadata.yaml'):
        open_source(path)


def test_export_refuses_an_existing_output_and_decreasing_stamps(frames, tmp_path):
    (tmp_path / 'bag').mkdir()
    with pytest.raises(ValueError, match='exists already'):
        export_bag(frames, tmp_path / 'bag', ExportOptions())
    backwards = [Frame(f.name, f.image, f.K, f.world_from_cam, stamp=10.0 - i)
                 for i, f in enumerate(frames[:3])]
    with pytest.raises(ValueError, match='does not follow the previous frame'):
        export_bag(backwards, tmp_path / 'other', ExportOptions())


def test_cli_export_map_evaluate_on_a_bag(tmp_path, capsys):
    bag = tmp_path / 'room'
    assert cli.main(['export-bag', SPEC, '-o', str(bag), '--storage', 'sqlite3',
                     '--world-frame', 'odom', '--base-frame', 'base_link']) == 0
    assert '12 frames (12 posed)' in capsys.readouterr().out
    map_path, report_path = tmp_path / 'room.ace', tmp_path / 'report.json'
    assert cli.main(['map', str(bag), '--world-frame', 'odom', '--block-split', '3:0',
                     '-o', str(map_path), '--report', str(report_path), '--preset', 'tiny',
                     '--image-height', str(HEIGHT), '--max-iterations', '10',
                     '--device', 'cpu', '--encoder', 'random:0']) == 0
    assert json.loads(report_path.read_text())['frames_used'] == 6
    scene_map = load_map(str(map_path))
    assert scene_map.world_frame_id == 'odom'  # the frame the bag's poses are in
    assert scene_map.frame_names[0] == '1.000000000'
    json_path = tmp_path / 'eval.json'
    assert cli.main(['evaluate', str(map_path), str(bag), '--world-frame', 'odom',
                     '--block-split', '3:1', '--json', str(json_path), '--image-height',
                     str(HEIGHT), '--device', 'cpu', '--encoder', 'random:0']) == 0
    assert json.loads(json_path.read_text())['n_frames'] == 6


def test_cli_bag_flags_on_a_dataset_folder_are_an_error(tmp_path, caplog):
    from ace_ros.data.synthetic import write_synthetic_scene
    scene = write_synthetic_scene(tmp_path / 'scene', SyntheticSceneConfig(
        seed=1, width=WIDTH, height=HEIGHT, n_train=2, n_test=0, texel_size=0.01))
    assert cli.main(['localize', 'x.ace', str(scene / 'train'), '--image-topic', '/c',
                     '-o', str(tmp_path / 'p.txt')]) == 2
    assert '--image-topic apply to ROS bags only' in caplog.text


def test_image_size_must_match_the_camera_info(frames, tmp_path):
    topics = _camera_topics(frames, STAMPS)
    info = _camera_info(frames[0].K, STAMPS[0])
    info.width = 2 * WIDTH
    topics['/cam/info'] = ('sensor_msgs/msg/CameraInfo', [(STAMPS[0], info)])
    source = RosbagSource(_write(tmp_path / 'bag', topics))
    with pytest.raises(ValueError, match=f'is {WIDTH}x{HEIGHT} but the camera info is for '
                                         f'{2 * WIDTH}x{HEIGHT}'):
        source[0]
