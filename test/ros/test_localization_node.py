"""localization_node as a separate process over real rclpy / Fast DDS.

One node process serves most of the module (starting one costs ~5 s of imports and map
loading): it starts on a corrupt map file and must survive it, gets the real map through
~/reload_map, and is then fed images from this process, with base_frame and odom_frame ''
(map -> camera, for a camera with no TF tree). Two more processes check the default frames
(REP-105): map -> odom with a robot's TF, and the fallbacks without odom; one more the
controls (on_demand, ~/trigger, ~/pause, ~/resume, initialpose, ~/reset). With the tiny map
and the random encoder poses are inaccurate, so the checks are the plumbing: stamps,
frames, TF, the engine's own result on the same image, dropping stale frames, logs, clean
shutdown.
"""

from __future__ import annotations

from pathlib import Path
import signal
import subprocess
import sys
import time

from ace_ros.core import geometry
from ace_ros.core.config import LocalizationConfig, mapping_config
from ace_ros.core.localizer import Localizer
from ace_ros.core.mapfile import save_map
from ace_ros.core.mapper import map_frames
from ace_ros.data.synthetic import SyntheticSceneConfig, generate_frames
from ace_ros.ros import conversions
from ace_ros.ros.tf import TfInterface
from ace_ros.ros.diagnostics import latest_values
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
import numpy as np
import pytest
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image
from std_srvs.srv import Trigger

HEIGHT, WIDTH = 120, 160
NS = '/loc_test'
NODE = f'{NS}/localization_node'
CAMERA_FRAME = 'test_camera_optical'
S = 1_000_000_000
STAMP0 = conversions.ns_to_stamp(0)
LOC_SETTINGS = dict(image_height=HEIGHT, device='cpu', encoder='random:0', min_inliers=4)
SCENE = SyntheticSceneConfig(seed=1, width=WIDTH, height=HEIGHT, focal=525 * HEIGHT / 480,
                             n_train=8, n_test=4, texel_size=0.01)


def _resend_until(send, predicate, spin_until, nodes, tries: int = 30,
                  each_s: float = 4.0) -> bool:
    """Send, spin until `predicate`; resend a few times (the topics are best effort, and a
    message sent while discovery is still settling may be lost; images that arrive while
    the node warms its network up are dropped, and on a loaded machine that takes ~30 s)."""
    for _ in range(tries):
        send()
        if spin_until(nodes, predicate, each_s):
            return True
    return False


@pytest.fixture(scope='module')
def scene(tmp_path_factory):
    """(map path, query frames); the map is built with the engine, tiny and fast."""
    root = tmp_path_factory.mktemp('loc')
    cfg = mapping_config('tiny', image_height=HEIGHT, max_iterations=5, device='cpu',
                         encoder='random:0')
    scene_map = map_frames(list(generate_frames(SCENE, 'train')), cfg).scene_map
    real_map = root / 'real.ace'
    save_map(str(real_map), scene_map)
    return real_map, list(generate_frames(SCENE, 'test'))


@pytest.fixture(scope='module')
def node_process(scene, tmp_path_factory, ros_env):
    """The node, started on a corrupt map file; yields (Popen, map path, log path)."""
    root = tmp_path_factory.mktemp('node')
    map_path, log_path = root / 'room.ace', root / 'node.log'
    map_path.write_bytes(b'this is not a map file' * 100)
    args = [str(Path(sys.executable).parent / 'localization_node'), '--ros-args',
            '-r', f'__ns:={NS}', '-p', f'map_path:={map_path}', '-p', 'tf_timeout:=0.0',
            '-p', "base_frame:=''", '-p', "odom_frame:=''"]  # the camera has no TF tree
    for name, value in LOC_SETTINGS.items():
        args += ['-p', f'{name}:={value}']
    env = dict(ros_env, RCUTILS_LOGGING_BUFFERED_STREAM='0')
    with open(log_path, 'w') as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        yield process, map_path, log_path
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


class Probe:
    """The test's side: publishes camera images, records what the node publishes."""

    def __init__(self, make_node):
        self.node = make_node('loc_probe')
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.image_pub = self.node.create_publisher(Image, f'{NS}/image', reliable)
        self.info_pub = self.node.create_publisher(CameraInfo, f'{NS}/camera_info', reliable)
        self.poses, self.covs, self.tfs, self.diags = [], [], [], []
        self.node.create_subscription(PoseStamped, f'{NODE}/pose', self.poses.append, 50)
        self.node.create_subscription(PoseWithCovarianceStamped,
                                      f'{NODE}/pose_with_covariance', self.covs.append, 50)
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self.diags.append, 50)
        from ace_ros.ros.tf import TF_QOS
        from tf2_msgs.msg import TFMessage
        self.node.create_subscription(
            TFMessage, '/tf', lambda m: self.tfs.extend(m.transforms), TF_QOS)
        self.reload = self.node.create_client(Trigger, f'{NODE}/reload_map')

    def send(self, frame, stamp_ns: int, encoding: str = 'rgb8') -> None:
        stamp = conversions.ns_to_stamp(stamp_ns)
        info = CameraInfo(width=WIDTH, height=HEIGHT, distortion_model='plumb_bob',
                          d=[0.0] * 5, k=frame.K.ravel().tolist())
        info.header.stamp, info.header.frame_id = stamp, CAMERA_FRAME
        self.info_pub.publish(info)
        if encoding == 'mono16':
            msg = Image(height=HEIGHT, width=WIDTH, encoding='mono16', step=2 * WIDTH)
            msg.data = bytes(2 * WIDTH * HEIGHT)
            msg.header.stamp, msg.header.frame_id = stamp, CAMERA_FRAME
        else:
            msg = conversions.rgb_to_image(frame.image, stamp, CAMERA_FRAME, encoding)
        self.image_pub.publish(msg)

    def diagnostic(self) -> dict:
        return latest_values(self.diags, 'localization_node: localization')


def _log(log_path: Path) -> str:
    return log_path.read_text(errors='replace')


def _wait_log(log_path: Path, text: str, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in _log(log_path):
            return True
        time.sleep(0.1)
    return False


def test_localization_node_end_to_end(node_process, scene, make_node, spin_until):
    process, map_path, log_path = node_process
    real_map, frames = scene
    probe = Probe(make_node)
    nodes = [probe.node]

    # 1. A corrupt map: a clear error, and the node stays up with its service.
    assert _wait_log(log_path, 'cannot load map'), _log(log_path)
    assert spin_until(nodes, probe.reload.service_is_ready, 30), _log(log_path)
    assert process.poll() is None
    assert 'not localizing until ~/reload_map succeeds' in _log(log_path)
    assert 'safetensors' in _log(log_path)  # says why the file is not a map
    assert spin_until(nodes, lambda: probe.image_pub.get_subscription_count() > 0
                      and probe.info_pub.get_subscription_count() > 0, 15)

    # Images without a map: skipped with a warning.
    assert _resend_until(lambda: probe.send(frames[0], 1 * S),
                         lambda: 'no map loaded' in _log(log_path), spin_until, nodes), \
        _log(log_path)

    # 2. The real map appears; ~/reload_map loads it.
    map_path.write_bytes(real_map.read_bytes())
    future = probe.reload.call_async(Trigger.Request())
    assert spin_until(nodes, future.done, 30)
    assert future.result().success, future.result().message
    assert 'loaded map' in future.result().message

    # 3. A wrong encoding: a warning naming it, no crash, nothing published.
    assert _resend_until(lambda: probe.send(frames[0], 2 * S, encoding='mono16'),
                         lambda: "'mono16' is not supported" in _log(log_path), spin_until,
                         nodes), _log(log_path)
    assert process.poll() is None and not probe.poses

    # 4. A good image: ~/pose in the map frame at the image's stamp, TF map -> camera (frames
    #    '': the old hand-held behaviour) and covariance agree,
    #    and the pose is the engine's own result for that image (the node's localizer is
    #    fresh after the reload, as this one is: same RANSAC seed).
    stamp_ns = 3 * S + 123_456_789
    # (Resending the same image is harmless: the first pose is the one compared.)
    assert _resend_until(lambda: probe.send(frames[1], stamp_ns), lambda: probe.poses and (
        probe.covs and any(t.child_frame_id == CAMERA_FRAME for t in probe.tfs)),
        spin_until, nodes), _log(log_path)
    pose = probe.poses[0]
    assert pose.header.frame_id == 'map'
    assert conversions.stamp_to_ns(pose.header.stamp) == stamp_ns
    map_from_cam = conversions.pose_stamped_to_matrix(pose)
    tf = next(t for t in probe.tfs if t.child_frame_id == CAMERA_FRAME)
    assert tf.header.frame_id == 'map' and conversions.stamp_to_ns(tf.header.stamp) == stamp_ns
    np.testing.assert_allclose(conversions.transform_stamped_to_matrix(tf), map_from_cam,
                               atol=1e-9)
    cov = probe.covs[0]
    assert cov.header == pose.header
    np.testing.assert_allclose(conversions.pose_to_matrix(cov.pose.pose), map_from_cam,
                               atol=1e-9)
    expected = Localizer.from_file(str(real_map), LocalizationConfig(**LOC_SETTINGS))
    result = expected.localize(frames[1])
    assert result.success
    np.testing.assert_allclose(map_from_cam, result.world_from_cam, atol=1e-4)
    np.testing.assert_allclose(
        conversions.covariance_diagonal(cov.pose.covariance),
        np.diag(conversions.covariance_from_confidence(result.confidence)), rtol=1e-6)

    # 5. A burst faster than localization: stale frames are dropped, never queued, and
    #    the newest frame is processed.
    # (>= 1: a slow first frame, e.g. compiling the network, may have seen a resend.)
    assert spin_until(nodes, lambda: int(probe.diagnostic().get('processed', 0)) >= 1, 10)
    n_poses = len(probe.poses)
    burst = [10 * S + i * S // 100 for i in range(20)]
    for i, stamp in enumerate(burst):
        probe.send(frames[i % len(frames)], stamp)
        time.sleep(0.02)
    assert spin_until(nodes, lambda: any(
        conversions.stamp_to_ns(p.header.stamp) == burst[-1] for p in probe.poses), 30)
    got = [conversions.stamp_to_ns(p.header.stamp) for p in probe.poses[n_poses:]]
    assert set(got) <= set(burst) and len(got) < len(burst)
    assert got == sorted(got)
    assert spin_until(nodes, lambda: int(probe.diagnostic().get('dropped_stale', 0)) > 0, 5)
    diag = probe.diagnostic()
    for key in ('input_rate_hz', 'processed_rate_hz', 'encoder_ms_mean', 'head_ms_mean',
                'ransac_ms_mean', 'inliers_mean', 'last_good_pose_age_s', 'bad_input'):
        assert key in diag, diag
    assert int(diag['bad_input']) >= 1 and int(diag['received']) >= 3

    # 6. A missing map through ~/reload_map: refused by name, the loaded map stays in use.
    client = AsyncParameterClient(probe.node, NODE)
    assert spin_until(nodes, lambda: client.services_are_ready(), 10)
    missing = str(map_path.parent / 'missing.ace')
    done = client.set_parameters([Parameter('map_path', value=missing)])
    assert spin_until(nodes, done.done, 10) and done.result().results[0].successful
    future = probe.reload.call_async(Trigger.Request())
    assert spin_until(nodes, future.done, 30)
    assert not future.result().success and 'missing.ace' in future.result().message
    assert 'keeping the previous map' in _log(log_path)
    n_poses = len(probe.poses)
    assert _resend_until(lambda: probe.send(frames[2], 20 * S),
                         lambda: len(probe.poses) > n_poses, spin_until, nodes), _log(log_path)

    # 7. SIGINT: a clean exit.
    process.send_signal(signal.SIGINT)
    assert process.wait(20) == 0, _log(log_path)
    assert 'Traceback' not in _log(log_path) and 'localization failed' not in _log(log_path)
    # base_frame and odom_frame '' say "no TF tree": no fallback warnings about them.
    assert 'not linked' not in _log(log_path) and 'REP-105' not in _log(log_path)
    assert {t.child_frame_id for t in probe.tfs} == {CAMERA_FRAME}


def _start_node(ns: str, map_path: Path, log_path: Path, env: dict, *extra: str):
    args = [str(Path(sys.executable).parent / 'localization_node'), '--ros-args',
            '-r', f'__ns:={ns}', '-p', f'map_path:={map_path}', *extra]
    for name, value in LOC_SETTINGS.items():
        args += ['-p', f'{name}:={value}']
    with open(log_path, 'w') as log:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(env, RCUTILS_LOGGING_BUFFERED_STREAM='0'))


def _stop(process) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(10)


def _base_covariance(confidence: float, map_from_cam, base_from_cam):
    return conversions.offset_pose_covariance(conversions.covariance_from_confidence(
        confidence), map_from_cam, geometry.invert_pose(base_from_cam))


def test_rep105_defaults_map_to_odom_under_sim_time(scene, make_node, spin_until, ros_env,
                                                    tmp_path):
    """Default frames (base_link, odom) with a robot's TF (the camera mount base_link ->
    camera, odometry odom -> base_link): ~/pose is base_link's pose, TF is map -> odom from
    odom -> base_link at the image stamp, future-dated, re-broadcast on the simulated clock,
    never going backwards until simulated time jumps back; SIGTERM ends the node cleanly."""
    real_map, frames = scene
    ns = '/odom_test'
    log_path = tmp_path / 'node.log'
    process = _start_node(ns, real_map, log_path, ros_env, '-p', 'use_sim_time:=true',
                          '-p', 'transform_tolerance:=0.5', '-p', 'tf_broadcast_rate:=20.0',
                          '-p', 'tf_timeout:=2.0')
    try:
        node = make_node('odom_probe')
        tf_out = TfInterface(node, use_tf2_ros=False, listen=False)
        clock_pub = node.create_publisher(Clock, '/clock', 10)
        reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        image_pub = node.create_publisher(Image, f'{ns}/image', reliable)
        info_pub = node.create_publisher(CameraInfo, f'{ns}/camera_info', reliable)
        poses, covs, map_odom, node_tf = [], [], [], []
        node.create_subscription(PoseStamped, f'{ns}/localization_node/pose', poses.append, 10)
        node.create_subscription(PoseWithCovarianceStamped,
                                 f'{ns}/localization_node/pose_with_covariance', covs.append,
                                 10)
        from ace_ros.ros.tf import TF_QOS
        from tf2_msgs.msg import TFMessage

        def on_tf(msg) -> None:
            node_tf.extend(t for t in msg.transforms if t.header.frame_id == 'map')
            map_odom.extend(t for t in msg.transforms if t.child_frame_id == 'odom')
        node.create_subscription(TFMessage, '/tf', on_tf, TF_QOS)
        assert spin_until([node], lambda: image_pub.get_subscription_count() > 0
                          and info_pub.get_subscription_count() > 0, 30), _log(log_path)
        assert _wait_log(log_path, 'loaded map'), _log(log_path)

        def clock(sec: float) -> None:
            clock_pub.publish(Clock(clock=conversions.ns_to_stamp(int(sec * S))))

        def odometry(times) -> dict:
            return _send_odometry(tf_out, times, [0.1, 0, 0])

        def send_image(sec: int) -> None:
            _send_camera_frame(image_pub, info_pub, frames[0], sec)

        # The camera mount (static, with a lever arm) and odometry around t = 100 s.
        base_from_cam = geometry.make_pose(geometry.axis_angle_to_matrix([0, 0, 0.3]),
                                           [0, 0, 0.5])
        tf_out.send_static([conversions.to_transform_stamped(base_from_cam, STAMP0,
                                                             'base_link', CAMERA_FRAME)])
        odom_from_base = odometry((99, 101))
        clock(100.0)
        assert _resend_until(lambda: send_image(100), lambda: poses and covs and map_odom,
                             spin_until, [node]), _log(log_path)
        first = map_odom[0]
        assert first.header.frame_id == 'map'
        assert conversions.stamp_to_ns(first.header.stamp) == 100 * S + S // 2
        # ~/pose is base_link's pose: with the mount it is the engine's camera pose (the
        # node's localizer is fresh, as this one is: same RANSAC seed).
        expected = Localizer.from_file(str(real_map), LocalizationConfig(**LOC_SETTINGS))
        result = expected.localize(frames[0])
        assert result.success
        map_from_base = conversions.pose_stamped_to_matrix(poses[0])
        assert poses[0].header.frame_id == 'map'
        assert conversions.stamp_to_ns(poses[0].header.stamp) == 100 * S
        map_from_cam = map_from_base @ base_from_cam
        np.testing.assert_allclose(map_from_cam, result.world_from_cam, atol=1e-4)
        assert np.abs(map_from_base[:3, 3] - map_from_cam[:3, 3]).max() > 0.1  # not the camera
        # map -> odom, composed with odom -> base_link -> camera at the image stamp, is the
        # localized camera pose.
        odom_from_cam = geometry.slerp_pose(odom_from_base[99], odom_from_base[101],
                                            0.5) @ base_from_cam
        np.testing.assert_allclose(
            conversions.transform_stamped_to_matrix(first) @ odom_from_cam, map_from_cam,
            atol=1e-6)
        # The covariance is the base's: the camera's, moved along the lever arm.
        cov = np.asarray(covs[0].pose.covariance).reshape(6, 6)
        np.testing.assert_allclose(conversions.pose_to_matrix(covs[0].pose.pose),
                                   map_from_base, atol=1e-9)
        np.testing.assert_allclose(cov, _base_covariance(result.confidence, map_from_cam,
                                                         base_from_cam), rtol=1e-6, atol=1e-12)
        assert np.abs(cov[:3, 3:]).max() > 1e-6  # position and rotation couple
        # Re-broadcast on the simulated clock: stamps follow /clock + tolerance.
        clock(250.0)
        assert spin_until([node], lambda: any(
            conversions.stamp_to_ns(t.header.stamp) == 250 * S + S // 2 for t in map_odom),
            10), [conversions.stamp_to_ns(t.header.stamp) for t in map_odom[-3:]]
        # A new pose at an older stamp than the re-broadcasts: stamps still go forward.
        odometry((110, 112))
        n = len(map_odom)
        clock(250.0)
        assert _resend_until(lambda: send_image(111), lambda: len(poses) > 1 and any(
            conversions.stamp_to_ns(p.header.stamp) == 111 * S for p in poses), spin_until,
            [node]), _log(log_path)
        assert spin_until([node], lambda: len(map_odom) > n, 5)
        stamps = [conversions.stamp_to_ns(t.header.stamp) for t in map_odom]
        assert all(a < b for a, b in zip(stamps, stamps[1:])), stamps
        # Simulated time jumps back (a bag restarts): stamps start again from it.
        clock(50.0)
        spin_until([node], lambda: False, 1.0)
        odometry((49, 51))
        clock(50.0)
        assert _resend_until(lambda: send_image(50), lambda: any(
            conversions.stamp_to_ns(t.header.stamp) == 50 * S + S // 2 for t in map_odom),
            spin_until, [node]), (_log(log_path), stamps[-3:])
        assert 'time jumped back' in _log(log_path)
        # Only map -> odom: the camera and base_link keep their one parent.
        assert {t.child_frame_id for t in node_tf} == {'odom'}
        # ~/reset forgets map -> odom: the clock moves on and nothing is re-broadcast.
        reset = node.create_client(Trigger, f'{ns}/localization_node/reset')
        assert spin_until([node], reset.service_is_ready, 10)
        future = reset.call_async(Trigger.Request())
        assert spin_until([node], future.done, 10) and future.result().success
        spin_until([node], lambda: False, 0.3)  # re-broadcasts already sent
        n = len(map_odom)
        clock(60.0)
        spin_until([node], lambda: False, 1.0)
        assert len(map_odom) == n, [conversions.stamp_to_ns(t.header.stamp)
                                    for t in map_odom[n:]]
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0, _log(log_path)
        assert 'Traceback' not in _log(log_path)
        assert "publishing map -> odom" in _log(log_path)
    finally:
        _stop(process)


def test_fallbacks_without_odom_never_give_a_frame_a_second_parent(
        scene, make_node, spin_until, ros_env, tmp_path):
    """Default frames, no odom in TF: map -> base_link while base_link has no parent; none
    (only the pose topics) once it has another parent; a camera not linked to base_link:
    map -> camera. Each fallback is logged."""
    real_map, frames = scene
    ns = '/fallback_test'
    log_path = tmp_path / 'node.log'
    process = _start_node(ns, real_map, log_path, ros_env)
    try:
        node = make_node('fallback_probe')
        tf_out = TfInterface(node, use_tf2_ros=False, listen=False)
        reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        image_pub = node.create_publisher(Image, f'{ns}/image', reliable)
        info_pub = node.create_publisher(CameraInfo, f'{ns}/camera_info', reliable)
        poses, covs, node_tf = [], [], []
        node.create_subscription(PoseStamped, f'{ns}/localization_node/pose', poses.append, 10)
        node.create_subscription(PoseWithCovarianceStamped,
                                 f'{ns}/localization_node/pose_with_covariance', covs.append,
                                 10)
        from ace_ros.ros.tf import TF_QOS
        from tf2_msgs.msg import TFMessage
        node.create_subscription(TFMessage, '/tf', lambda m: node_tf.extend(
            t for t in m.transforms if t.header.frame_id == 'map'), TF_QOS)
        assert spin_until([node], lambda: image_pub.get_subscription_count() > 0
                          and info_pub.get_subscription_count() > 0, 30), _log(log_path)
        assert _wait_log(log_path, 'loaded map'), _log(log_path)

        def send_image(sec: int, camera: str = CAMERA_FRAME) -> None:
            _send_camera_frame(image_pub, info_pub, frames[0], sec, camera)

        def at(items, sec: int) -> list:
            return [m for m in items if conversions.stamp_to_ns(m.header.stamp) == sec * S]

        # 1. The camera mount, no odom: map -> base_link at the image stamp (it has no parent).
        base_from_cam = geometry.make_pose(geometry.axis_angle_to_matrix([0.2, 0, 0]),
                                           [0.3, 0, 0.4])
        tf_out.send_static([conversions.to_transform_stamped(base_from_cam, STAMP0,
                                                             'base_link', CAMERA_FRAME)])
        spin_until([node], lambda: False, 1.0)  # let the node hear it
        assert _resend_until(lambda: send_image(1), lambda: at(poses, 1) and at(node_tf, 1),
                             spin_until, [node]), _log(log_path)
        tf, pose = at(node_tf, 1)[0], at(poses, 1)[0]
        assert tf.child_frame_id == 'base_link'
        map_from_base = conversions.pose_stamped_to_matrix(pose)
        np.testing.assert_allclose(conversions.transform_stamped_to_matrix(tf), map_from_base,
                                   atol=1e-9)
        result = Localizer.from_file(str(real_map), LocalizationConfig(**LOC_SETTINGS)
                                     ).localize(frames[0])  # fresh, as the node's
        np.testing.assert_allclose(map_from_base @ base_from_cam, result.world_from_cam,
                                   atol=1e-4)
        cov = np.asarray(at(covs, 1)[0].pose.covariance).reshape(6, 6)
        np.testing.assert_allclose(cov, _base_covariance(
            result.confidence, map_from_base @ base_from_cam, base_from_cam), rtol=1e-6,
            atol=1e-12)
        assert _wait_log(log_path, 'REP-105 fallback', 5), _log(log_path)

        # 2. base_link gets another parent: no TF from the node, the pose topics go on.
        tf_out.send_static([conversions.to_transform_stamped(np.eye(4), STAMP0, 'world',
                                                             'base_link')])
        spin_until([node], lambda: False, 1.0)
        assert _resend_until(lambda: send_image(2), lambda: at(poses, 2) and at(covs, 2),
                             spin_until, [node]), _log(log_path)
        spin_until([node], lambda: False, 1.0)  # a transform would have arrived by now
        assert not at(node_tf, 2), at(node_tf, 2)
        assert "'base_link' already has the parent 'world' in TF: publishing no TF" in \
            _log(log_path)
        # Still the base's pose: its covariance couples position and rotation (lever arm).
        assert np.abs(np.asarray(at(covs, 2)[0].pose.covariance).reshape(6, 6)[:3, 3:]
                      ).max() > 1e-6

        # 3. A camera that is not linked to base_link: its own pose and map -> camera.
        assert _resend_until(lambda: send_image(3, 'loose_camera'),
                             lambda: at(poses, 3) and at(node_tf, 3), spin_until, [node]), \
            _log(log_path)
        tf = at(node_tf, 3)[0]
        assert tf.child_frame_id == 'loose_camera'
        np.testing.assert_allclose(conversions.transform_stamped_to_matrix(tf),
                                   conversions.pose_stamped_to_matrix(at(poses, 3)[0]),
                                   atol=1e-9)
        assert "base_frame 'base_link' is not linked to the camera frame 'loose_camera'" in \
            _log(log_path)
        # Never a transform to a frame that had a parent: not the camera, not odom.
        assert {t.child_frame_id for t in node_tf} == {'base_link', 'loose_camera'}
        assert _log(log_path).count('REP-105 fallback') == 2  # once per frame, not per image
        assert 'Traceback' not in _log(log_path)
    finally:
        _stop(process)


def test_image_stamps_jumping_back_reset_tf_and_map_to_odom(
        scene, make_node, spin_until, ros_env, tmp_path):
    """A bag looped with the node on its own clock (no /clock): the image stamps jump back.
    The node warns once, counts it, skips the image that showed it, clears TF and map ->
    odom, and goes on: map -> odom from the new odometry, stamped from the new time (before
    the jump every stamp went forward), and never a fallback map -> base_link meanwhile."""
    real_map, frames = scene
    ns = '/jump_test'
    log_path = tmp_path / 'node.log'
    # No re-broadcast: on the wall clock it would stamp at now, far from these stamps.
    process = _start_node(ns, real_map, log_path, ros_env, '-p', 'tf_broadcast_rate:=0.0',
                          '-p', 'transform_tolerance:=0.5', '-p', 'tf_timeout:=2.0',
                          '-p', 'diagnostics_period:=0.2')
    try:
        node = make_node('jump_probe')
        tf_out = TfInterface(node, use_tf2_ros=False, listen=False)
        reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        image_pub = node.create_publisher(Image, f'{ns}/image', reliable)
        info_pub = node.create_publisher(CameraInfo, f'{ns}/camera_info', reliable)
        poses, map_odom, node_tf, diags = [], [], [], []
        node.create_subscription(PoseStamped, f'{ns}/localization_node/pose', poses.append, 10)
        node.create_subscription(DiagnosticArray, '/diagnostics', diags.append, 10)
        from ace_ros.ros.tf import TF_QOS
        from tf2_msgs.msg import TFMessage

        def on_tf(msg) -> None:
            node_tf.extend(t for t in msg.transforms if t.header.frame_id == 'map')
            map_odom.extend(t for t in msg.transforms if t.child_frame_id == 'odom')
        node.create_subscription(TFMessage, '/tf', on_tf, TF_QOS)
        assert spin_until([node], lambda: image_pub.get_subscription_count() > 0
                          and info_pub.get_subscription_count() > 0, 30), _log(log_path)
        assert _wait_log(log_path, 'loaded map'), _log(log_path)

        def odometry(times) -> dict:
            return _send_odometry(tf_out, times, [0.1, 0.02, 0])

        def send_image(sec: int) -> None:
            _send_camera_frame(image_pub, info_pub, frames[0], sec)

        def stamps() -> list:
            return [conversions.stamp_to_ns(t.header.stamp) for t in map_odom]

        def diagnostic() -> dict:
            return latest_values(diags, 'localization_node: localization')

        base_from_cam = geometry.make_pose(geometry.axis_angle_to_matrix([0, 0.2, 0]),
                                           [0.1, 0, 0.4])
        tf_out.send_static([conversions.to_transform_stamped(base_from_cam, STAMP0,
                                                             'base_link', CAMERA_FRAME)])
        # 1. The first pass of the bag: two poses, map -> odom stamps going forward.
        for sec in (1000, 1002):
            odometry((sec - 1, sec + 1))
            assert _resend_until(lambda: send_image(sec), lambda: sec * S + S // 2 in stamps(),
                                 spin_until, [node]), (_log(log_path), stamps())
        before = stamps()
        assert all(a < b for a, b in zip(before, before[1:])), before
        assert 'time jumped back' not in _log(log_path)

        # 2. The bag loops: an image 990 s older. The node warns and skips that image ...
        n_poses = len(poses)
        send_image(10)
        assert _wait_log(log_path, 'image stamps jumped back by 992.0 s', 10), _log(log_path)
        # ... and goes on with the new time's odometry: map -> odom at 10 s + tolerance, no
        # longer held above the old stamps.
        odom_from_base = odometry((9, 10, 11))
        assert _resend_until(lambda: send_image(10), lambda: 10 * S + S // 2 in stamps(),
                             spin_until, [node]), (_log(log_path), stamps())
        # It is the new odometry's: composed with odom -> base_link at 10 s it gives the
        # base pose published for that image (the first map -> odom at 10.5 s goes with the
        # first pose at 10 s).
        new = map_odom[stamps().index(10 * S + S // 2)]
        pose = next(p for p in poses[n_poses:] if conversions.stamp_to_ns(p.header.stamp)
                    == 10 * S)
        np.testing.assert_allclose(
            conversions.transform_stamped_to_matrix(new) @ odom_from_base[10],
            conversions.pose_stamped_to_matrix(pose), atol=1e-6)
        # The pose published after the jump is at the new time, none from the skipped image
        # before odometry came back (it would have been a map -> base_link fallback).
        assert {conversions.stamp_to_ns(p.header.stamp) for p in poses[n_poses:]} == {10 * S}
        assert {t.child_frame_id for t in node_tf} == {'odom'}, \
            {t.child_frame_id for t in node_tf}
        assert spin_until([node], lambda: diagnostic().get('time_jumps') == '1'
                          and int(diagnostic().get('discarded_stale', 0)) >= 1, 10), \
            diagnostic()
        assert _log(log_path).count('time jumped back') == 1
        assert 'REP-105 fallback' not in _log(log_path)
        assert 'Traceback' not in _log(log_path)
    finally:
        _stop(process)


def test_controls_on_demand_trigger_pause_resume_initialpose_reset(
        scene, make_node, spin_until, ros_env, tmp_path):
    """One node started in on_demand mode (a camera with no TF tree): images are skipped
    until ~/trigger, which localizes one; mode set to continuous while running (a bad mode
    refused by name); ~/pause stops the poses and refuses triggers, ~/resume restarts them;
    an initialpose 1 km from the pose rejects it, one at the pose lets it through and lifts
    the gate; ~/reset drops a pending initialpose."""
    real_map, frames = scene
    ns = '/controls_test'
    log_path = tmp_path / 'node.log'
    process = _start_node(ns, real_map, log_path, ros_env, '-p', 'mode:=on_demand',
                          '-p', "base_frame:=''", '-p', "odom_frame:=''",
                          '-p', 'tf_timeout:=0.0', '-p', 'diagnostics_period:=0.2',
                          # The random encoder's poses of one image differ by metres and
                          # turns between calls: a gate wider than the scene, position only
                          # (the unit tests check the sizes and the heading).
                          '-p', 'initialpose_gate_m:=50.0', '-p', 'initialpose_gate_deg:=180.0')
    try:
        node = make_node('controls_probe')
        reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        image_pub = node.create_publisher(Image, f'{ns}/image', reliable)
        info_pub = node.create_publisher(CameraInfo, f'{ns}/camera_info', reliable)
        prior_pub = node.create_publisher(PoseWithCovarianceStamped, f'{ns}/initialpose',
                                          reliable)
        poses, diags = [], []
        node.create_subscription(PoseStamped, f'{ns}/localization_node/pose', poses.append, 10)
        node.create_subscription(DiagnosticArray, '/diagnostics', diags.append, 10)
        clients = {name: node.create_client(Trigger, f'{ns}/localization_node/{name}')
                   for name in ('trigger', 'pause', 'resume', 'reset')}
        assert spin_until([node], lambda: image_pub.get_subscription_count() > 0
                          and prior_pub.get_subscription_count() > 0
                          and all(c.service_is_ready() for c in clients.values()), 30), \
            _log(log_path)
        assert _wait_log(log_path, 'loaded map'), _log(log_path)

        def call(name: str):
            future = clients[name].call_async(Trigger.Request())
            assert spin_until([node], future.done, 10), name
            return future.result()

        def count(key: str) -> int:
            return int(latest_values(diags, 'localization_node: localization').get(key, 0))

        def send(sec: int) -> None:
            _send_camera_frame(image_pub, info_pub, frames[0], sec)

        def at(sec: int) -> list:
            return [p for p in poses if conversions.stamp_to_ns(p.header.stamp) == sec * S]

        def skipped(sec: int, key: str) -> None:
            """`sec`'s image is received and counted under `key`, and publishes nothing."""
            before = count(key)
            assert _resend_until(lambda: send(sec), lambda: count(key) > before, spin_until,
                                 [node], each_s=2.0), (key, _log(log_path))
            spin_until([node], lambda: False, 0.5)  # a pose would have come by now
            assert not at(sec), sec

        def prior(map_from_cam) -> None:
            n = _log(log_path).count('initialpose received')
            msg = PoseWithCovarianceStamped()
            msg.header.frame_id = 'map'
            msg.pose.pose = conversions.matrix_to_pose(map_from_cam)
            prior_pub.publish(msg)
            assert spin_until([node], lambda: _log(log_path).count('initialpose received')
                              > n, 10), _log(log_path)

        # 1. on_demand: no pose without a trigger; a trigger localizes one image.
        skipped(1, 'skipped_untriggered')
        assert not poses
        reply = call('trigger')
        assert reply.success and 'next image' in reply.message
        assert _resend_until(lambda: send(2), lambda: at(2), spin_until, [node]), _log(log_path)
        skipped(3, 'skipped_untriggered')
        assert len(poses) == 1

        # 2. The mode changes while running; a bad one is refused by name.
        params_client = AsyncParameterClient(node, f'{ns}/localization_node')
        assert spin_until([node], params_client.services_are_ready, 10)
        for value, ok in (('sometimes', False), ('continuous', True)):
            done = params_client.set_parameters([Parameter('mode', value=value)])
            assert spin_until([node], done.done, 10)
            result = done.result().results[0]
            assert result.successful == ok, result.reason
        assert "parameter mode must be one of ['continuous', 'on_demand'], got 'sometimes'" \
            in result.reason or ok
        assert _resend_until(lambda: send(4), lambda: at(4), spin_until, [node]), _log(log_path)

        # 3. Paused: nothing is localized and triggers are refused; resumed: poses again.
        assert call('pause').success
        reply = call('trigger')
        assert not reply.success and 'paused' in reply.message
        skipped(5, 'skipped_paused')
        assert call('resume').success
        assert _resend_until(lambda: send(6), lambda: at(6), spin_until, [node]), _log(log_path)

        # 4. An initialpose far from where the image localizes: its pose is rejected. One
        #    at that pose: accepted, and the gate is lifted.
        map_from_cam = conversions.pose_stamped_to_matrix(at(6)[0])
        far = map_from_cam.copy()
        far[0, 3] += 1000.0
        prior(far)
        skipped(7, 'gated')
        assert 'pose rejected: 99' in _log(log_path) or 'pose rejected: 100' in \
            _log(log_path), _log(log_path)
        prior(map_from_cam)
        assert _resend_until(lambda: send(8), lambda: at(8), spin_until, [node]), _log(log_path)
        assert _wait_log(log_path, 'gate lifted', 5)

        # 5. ~/reset drops a pending initialpose (and the last pose).
        prior(far)
        reply = call('reset')
        assert reply.success and 'initialpose' in reply.message
        assert _resend_until(lambda: send(9), lambda: at(9), spin_until, [node]), _log(log_path)
        assert 'Traceback' not in _log(log_path)
    finally:
        _stop(process)


@pytest.mark.parametrize('bad, message', [
    (('mode:=sometimes',), "parameter mode must be one of ['continuous', 'on_demand'], got "
     "'sometimes'"),
    (('initialpose_gate_m:=0.0',), 'parameter initialpose_gate_m must be > 0 (m), got 0.0')])
def test_bad_control_parameters_stop_the_node_by_name(bad, message, scene, ros_env,
                                                      tmp_path):
    log_path = tmp_path / 'node.log'
    process = _start_node('/bad_controls', scene[0], log_path, ros_env,
                          *[a for b in bad for a in ('-p', b)])
    try:
        assert process.wait(30) == 2, _log(log_path)
        assert f'invalid parameters: {message}' in _log(log_path), _log(log_path)
        assert 'Traceback' not in _log(log_path)
    finally:
        _stop(process)


def _send_odometry(tf_out, times, velocity) -> dict:
    """odom -> base_link samples at `times` (s), moving at `velocity` (m/s), sent on /tf."""
    samples = {t: geometry.make_pose(np.eye(3), np.asarray(velocity, float) * t)
               for t in times}
    tf_out.send([conversions.to_transform_stamped(
        pose, conversions.ns_to_stamp(int(t * S)), 'odom', 'base_link')
        for t, pose in samples.items()])
    return samples


def _send_camera_frame(image_pub, info_pub, frame, sec: int,
                       camera: str = CAMERA_FRAME) -> None:
    """`frame`'s CameraInfo and image from `camera`, stamped `sec` seconds."""
    stamp = conversions.ns_to_stamp(sec * S)
    info = CameraInfo(width=WIDTH, height=HEIGHT, k=frame.K.ravel().tolist())
    info.header.stamp, info.header.frame_id = stamp, camera
    info_pub.publish(info)
    image_pub.publish(conversions.rgb_to_image(frame.image, stamp, camera))
