"""mapping_node as a separate process over Fast DDS: inputs, pose sources, end, Ctrl-C.

Each test starts the node (tiny settings, random encoder), feeds it a synthetic room, and
checks what it logged and wrote. The random encoder cannot localize well: these tests check
plumbing and counts, not accuracy.
"""

from __future__ import annotations

import math
from pathlib import Path
import re
import signal
import subprocess
import sys
import threading
import time

from ace_ros.ros.bag_player import BagPlayer
from ace_ros.bag_tools import export_bag, ExportOptions
from ace_ros.core.config import LocalizationConfig
from ace_ros.core.localizer import Localizer
from ace_ros.core.mapfile import load_map
from ace_ros.data.ace_layout import AceLayoutSource
from ace_ros.data.synthetic import generate_frames, SyntheticSceneConfig
from ace_ros.ros import conversions
from ace_ros.ros.diagnostics import latest_values
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
import numpy as np
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_srvs.srv import Trigger
import yaml

SCENE = SyntheticSceneConfig(seed=2, width=160, height=120, focal=140.0, n_train=8, n_test=2,
                             texel_size=0.01)
HEIGHT = 64
T0_NS = 100 * 1_000_000_000
PERIOD_NS = 200_000_000
SETTINGS = {
    'preset': 'tiny', 'device': 'cpu', 'encoder': 'random:0', 'image_height': HEIGHT,
    'samples_per_image': 64, 'batch_size': 256, 'max_iterations': 10,
    'min_translation_m': 0.0, 'min_rotation_deg': 0.0, 'image_qos': 'reliable',
    'diagnostics_period': 0.5,
}
RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)


@pytest.fixture(scope='module')
def frames():
    return list(generate_frames(SCENE, 'train')), list(generate_frames(SCENE, 'test'))


@pytest.fixture(scope='module')
def bag(frames, tmp_path_factory):
    """The train frames as a bag at 5 Hz from 100 s.

    Images, camera_info, /camera/pose and TF map -> base_link (/tf) ->
    camera_optical_frame (/tf_static optical mount).
    """
    path = tmp_path_factory.mktemp('bag') / 'room'
    export_bag(frames[0], path, ExportOptions(base_frame='base_link', rate=5.0,
                                              start_time=100.0), stamped=False)
    return path


class NodeProcess:
    """mapping_node in a subprocess, its output in a log file."""

    def __init__(self, tmp_path: Path, env: dict, overrides: dict, remaps=()) -> None:
        self.map_path = tmp_path / 'room.ace'
        self.log_path = tmp_path / 'mapping_node.log'
        parameters = {**SETTINGS, 'map_path': str(self.map_path), **overrides}
        params_file = tmp_path / 'params.yaml'
        params_file.write_text(yaml.safe_dump({'mapping_node': {'ros__parameters': parameters}}))
        command = [sys.executable, '-m', 'ace_ros.ros.mapping_node', '--ros-args',
                   '--params-file', str(params_file)]
        for old, new in remaps:
            command += ['-r', f'{old}:={new}']
        self._log = open(self.log_path, 'w')
        self.proc = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=self._log,
                                     stderr=subprocess.STDOUT)

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait(self, timeout_s: float) -> int:
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f'mapping_node still running after {timeout_s} s; log:\n{self.log}')

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def inputs(self) -> dict:
        """Counters from the node's 'training the map; inputs: ...' line."""
        match = re.search(r'training the map; inputs: (.*)', self.log)
        assert match, self.log
        return {name: int(n) for name, n in re.findall(r'(\w+) (\d+)', match.group(1))}


@pytest.fixture
def start_node(tmp_path, ros_env):
    started = []

    def start(overrides: dict, remaps=()) -> NodeProcess:
        node = NodeProcess(tmp_path, ros_env, overrides, remaps)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


def _wait_for_subscriber(publisher, spin_until, feeder, node: NodeProcess) -> None:
    if not spin_until([feeder], lambda: publisher.get_subscription_count() > 0
                      or node.proc.poll() is not None, 30.0):
        pytest.fail(f'mapping_node did not subscribe within 30 s; log:\n{node.log}')
    assert node.proc.poll() is None, node.log


def _stamp(ns: int):
    return conversions.ns_to_stamp(ns)


def _camera_info(K: np.ndarray) -> CameraInfo:
    info = CameraInfo()
    info.width, info.height = SCENE.width, SCENE.height
    info.k = [float(v) for v in K.ravel()]
    info.p = [float(v) for v in np.hstack([K, np.zeros((3, 1))]).ravel()]
    info.distortion_model = 'plumb_bob'
    info.d = [0.0] * 5
    return info


def _keyframes(diagnostics) -> int:
    """The keyframe count in the newest mapping_node diagnostics (-1: none yet)."""
    return int(latest_values(diagnostics, 'mapping_node: mapping').get('keyframes', -1))


def _check_map_localizes(map_path: Path, queries) -> None:
    scene_map = load_map(str(map_path))
    assert scene_map.world_frame_id == 'map'
    localizer = Localizer.from_file(str(map_path), LocalizationConfig(
        device='cpu', image_height=HEIGHT, encoder='random:0', min_inliers=4,
        ransac_hypotheses=8, ransac_max_tries=200, refinement_iterations=2))
    for frame in queries:
        result = localizer.localize(frame)
        assert result.n_cells > 0 and np.isfinite(result.confidence)


def test_pose_topic_bad_inputs_and_max_keyframes(frames, start_node, make_node, spin_until):
    """PoseStamped poses; bad inputs are logged and counted, good frames all kept.

    No bad input is fatal; with finish_at_max_keyframes, reaching max_keyframes trains and
    writes the map.
    """
    train, test = frames
    node = start_node({'max_keyframes': 7, 'finish_at_max_keyframes': True,
                       'idle_timeout_s': 0.0})
    feeder = make_node('feeder_pose')
    image_pub = feeder.create_publisher(Image, 'image', RELIABLE)
    info_pub = feeder.create_publisher(CameraInfo, 'camera_info', RELIABLE)
    pose_pub = feeder.create_publisher(PoseStamped, 'pose', RELIABLE)
    _wait_for_subscriber(pose_pub, spin_until, feeder, node)
    _wait_for_subscriber(image_pub, spin_until, feeder, node)
    stamps = [T0_NS + i * PERIOD_NS for i in range(len(train))]

    def pose_msg(i_or_ns, pose=None):
        ns = stamps[i_or_ns] if pose is None else i_or_ns
        return conversions.to_pose_stamped(train[i_or_ns].world_from_cam if pose is None
                                           else pose, _stamp(ns), 'map')

    def image_msg(i, ns=None, encoding='rgb8'):
        return conversions.rgb_to_image(train[i].image, _stamp(ns or stamps[i]), 'camera',
                                        encoding)

    # Images before camera_info are held, not lost.
    image_pub.publish(image_msg(0))
    image_pub.publish(image_msg(1))
    spin_until([feeder], lambda: False, 1.0)
    info_pub.publish(_camera_info(train[0].K))
    pose_pub.publish(pose_msg(0))
    pose_pub.publish(pose_msg(0))                                   # duplicate stamp
    nan_pose = pose_msg(T0_NS + 10_000_000, train[0].world_from_cam)
    nan_pose.pose.position.x = math.nan                             # non-finite
    pose_pub.publish(nan_pose)
    long_quaternion = pose_msg(T0_NS + 20_000_000, train[0].world_from_cam)
    long_quaternion.pose.orientation.w *= 2.0                       # not normalised
    pose_pub.publish(long_quaternion)
    for i in (1, 2, 3):
        pose_pub.publish(pose_msg(i))
    pose_pub.publish(pose_msg(1))                                   # out of order
    for i in (4, 6, 7):                                             # frame 5: no pose
        pose_pub.publish(pose_msg(i))
    for i in (2, 3, 4):
        image_pub.publish(image_msg(i))
    image_pub.publish(image_msg(4))                                 # duplicate stamp
    image_pub.publish(image_msg(5))
    image_pub.publish(image_msg(1))                                 # out of order
    bad = image_msg(6, stamps[5] + 50_000_000)
    bad.encoding = '16UC1'                                          # unsupported
    image_pub.publish(bad)
    for i in (6, 7):
        image_pub.publish(image_msg(i))

    assert node.wait(60.0) == 0, node.log
    log = node.log
    for text in ('no camera_info yet', "camera frame 'camera' does not look like an optical",
                 'repeats the previous pose stamp', 'non-finite', 'not normalised',
                 'older than the previous pose', 'repeats the previous image stamp',
                 'older than the previous image', "encoding '16UC1' is not supported",
                 'has no pose', '7 keyframes collected (max_keyframes, finish_at_max_keyframes)',
                 'map written to'):
        assert text in log, f'{text!r} not in log:\n{log}'
    counts = node.inputs()
    assert counts['keyframes'] == 7 and counts['no_pose'] == 1, counts
    assert counts['pose_duplicate_stamp'] == 1 and counts['pose_out_of_order'] == 1
    assert counts['pose_invalid'] == 2 and counts['image_unsupported'] == 1
    assert counts['image_duplicate_stamp'] == 1 and counts['image_out_of_order'] == 1
    assert 'Traceback' not in log, log
    names = load_map(str(node.map_path)).frame_names
    assert len(names) == 7 and '100.000000000' in names
    assert len(AceLayoutSource(node.map_path.parent / 'room_keyframes')) == 7
    _check_map_localizes(node.map_path, test)


def test_tf_poses_with_sim_time_end_when_the_bag_ends(frames, bag, start_node, make_node,
                                                      spin_until):
    """A replayed bag with /clock: poses from TF, and mapping ends by itself.

    TF is map -> base_link -> optical frame; training starts once images stop
    (idle_timeout_s, wall clock).
    """
    train, test = frames
    node = start_node({'pose_source': 'tf', 'fixed_frame': 'map', 'use_sim_time': True,
                       'idle_timeout_s': 1.5},
                      remaps=[('image', '/camera/image_raw'),
                              ('camera_info', '/camera/camera_info')])
    feeder = make_node('feeder_tf')
    diagnostics = []
    feeder.create_subscription(DiagnosticArray, '/diagnostics', diagnostics.append, 10)
    player = BagPlayer(bag, clock_hz=50.0)
    played = {}
    thread = threading.Thread(target=lambda: played.update(stats=player.run(
        feeder, ['/camera/image_raw', '/camera/camera_info', '/clock', '/tf', '/tf_static'],
        wait_timeout_s=30.0)))
    thread.start()
    try:
        spin_until([feeder], lambda: node.proc.poll() is not None, 60.0)
    finally:
        player.stop()
        thread.join()
    assert node.wait(5.0) == 0, node.log
    assert played['stats'].messages['/camera/image_raw'] == len(train)
    counts = node.inputs()
    assert counts['keyframes'] == len(train) and counts.get('no_pose', 0) == 0, counts
    assert 'no images for' in node.log and 'does not look like an optical' not in node.log
    assert 'Traceback' not in node.log, node.log
    # use_sim_time: the node's clock is the bag's (100 s onwards), not the wall clock.
    ours = [d for d in diagnostics if any(s.name == 'mapping_node: mapping' for s in d.status)]
    assert ours and all(d.header.stamp.sec < 1000 for d in ours)
    _check_map_localizes(node.map_path, test)


def test_max_keyframes_thins_evenly_and_collection_goes_on(frames, bag, start_node, make_node):
    """Past max_keyframes (the default policy) the node thins the keyframes and keeps
    collecting: the map covers the whole bag, every second frame of it."""
    train, _ = frames
    node = start_node({'max_keyframes': 5, 'idle_timeout_s': 1.5},
                      remaps=[('image', '/camera/image_raw'),
                              ('camera_info', '/camera/camera_info'), ('pose', '/camera/pose')])
    feeder = make_node('feeder_thinning')
    topics = ['/camera/image_raw', '/camera/camera_info', '/camera/pose']
    BagPlayer(bag, rate=2.0, clock_hz=0.0, topics=topics).run(
        feeder, ['/camera/image_raw', '/camera/pose'], wait_timeout_s=30.0)
    assert node.wait(60.0) == 0, node.log
    # 8 frames, 5 at most: the 6th thins 0-4 to 0, 2, 4; then every second frame.
    assert 'thinned the keyframes evenly, 3 of 5 kept' in node.log, node.log
    assert 'no images for' in node.log and 'Traceback' not in node.log, node.log
    counts = node.inputs()
    assert counts['images'] == len(train) and counts['keyframes'] == 4, counts
    assert counts['keyframes_thinned'] == 2 and counts['skipped_spacing'] == 2, counts
    assert load_map(str(node.map_path)).frame_names == [
        '100.000000000', '100.400000000', '100.800000000', '101.200000000']


def test_ctrl_c_during_training_keeps_keyframes_and_the_old_map(frames, bag, start_node,
                                                                make_node, spin_until):
    """~/save_keyframes, ~/finish, then SIGINT while training.

    The previous map stays as it was and the keyframes stay saved.
    """
    train, _ = frames
    node = start_node({'max_iterations': 1_000_000, 'epochs': 100000.0, 'idle_timeout_s': 0.0},
                      remaps=[('image', '/camera/image_raw'),
                              ('camera_info', '/camera/camera_info'), ('pose', '/camera/pose')])
    node.map_path.write_bytes(b'the previous map')
    feeder = make_node('feeder_sigint')
    diagnostics = []
    feeder.create_subscription(DiagnosticArray, '/diagnostics', diagnostics.append, 10)
    topics = ['/camera/image_raw', '/camera/camera_info', '/camera/pose']
    BagPlayer(bag, rate=2.0, clock_hz=0.0, topics=topics).run(
        feeder, ['/camera/image_raw', '/camera/pose'], wait_timeout_s=30.0)

    def call(service: str) -> Trigger.Response:
        client = feeder.create_client(Trigger, f'/mapping_node/{service}')
        assert client.wait_for_service(timeout_sec=10.0), node.log
        future = client.call_async(Trigger.Request())
        assert spin_until([feeder], future.done, 30.0), node.log
        return future.result()

    # The node encodes keyframes as they arrive; on a busy machine it may lag the player.
    assert spin_until([feeder], lambda: _keyframes(diagnostics) == len(train), 30.0), node.log
    saved = call('save_keyframes')
    assert saved.success and 'room_keyframes' in saved.message, saved.message
    assert len(AceLayoutSource(node.map_path.parent / 'room_keyframes')) == len(train)
    started = call('finish')
    assert started.success, started.message
    assert not call('finish').success  # services stay responsive during training
    deadline = time.monotonic() + 30.0
    while 'training: iteration' not in node.log and time.monotonic() < deadline:
        time.sleep(0.2)
    assert 'training: iteration' in node.log, node.log
    node.proc.send_signal(signal.SIGINT)
    node.wait(20.0)
    assert node.map_path.read_bytes() == b'the previous map'
    # The copy saved before training began (the service's copy holds the first name).
    assert 'mapping stopped (mapping cancelled during training)' in node.log, node.log
    assert 'Traceback' not in node.log, node.log
    assert len(AceLayoutSource(node.map_path.parent / 'room_keyframes.1')) == len(train)


def test_odometry_must_describe_the_camera_frame(frames, ros_context, tmp_path):
    """pose_source 'odom' (in-process node): only the camera's odometry is used.

    An Odometry of the robot body is refused with a pointer to the TF source.
    """
    from ace_ros.ros.mapping_node import MappingNode
    from rclpy.parameter import Parameter
    train, _ = frames
    overrides = {**SETTINGS, 'pose_source': 'odom', 'camera_frame': 'camera_optical_frame',
                 'map_path': str(tmp_path / 'room.ace')}
    node = MappingNode(context=ros_context, parameter_overrides=[
        Parameter(name, value=value) for name, value in overrides.items()])
    try:
        body = conversions.to_odometry(train[0].world_from_cam, _stamp(T0_NS), 'map',
                                       'base_link')
        node._on_odometry(body)
        camera = conversions.to_odometry(train[0].world_from_cam, _stamp(T0_NS), 'map',
                                         'camera_optical_frame')
        node._on_odometry(camera)
        counts = node.session.status().counts
        assert counts['pose_not_camera'] == 1 and counts['poses'] == 2
        assert node.session._track.latest_ns == T0_NS  # the camera's odometry was taken
    finally:
        node.destroy_node()
