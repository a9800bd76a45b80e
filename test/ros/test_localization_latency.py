"""localization_node warms up before its first pose (issue 17), as a separate process.

The first frame of an image size pays for compiling the encoder and every region's head
(OpenVINO). The node does it on a blank frame as soon as a CameraInfo gives the size, so
the first image's latency is that of the others and nothing compiles while images stream;
a map loaded by ~/reload_map is warmed up before it replaces the old one. The map has two
regions (two heads), tiny, with the random encoder: the checks are timing and logs, not
accuracy.
"""

from __future__ import annotations

from pathlib import Path
import statistics
import subprocess
import sys
import time

from ace_ros.core.config import mapping_config
from ace_ros.core.mapfile import save_map
from ace_ros.core.mapper import map_frames
from ace_ros.data.synthetic import SyntheticSceneConfig, generate_frames
from ace_ros.ros import conversions
from ace_ros.ros.diagnostics import latest_values
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_srvs.srv import Trigger

HEIGHT, WIDTH = 120, 160
NS = '/warm_test'
NODE = f'{NS}/localization_node'
CAMERA_FRAME = 'warm_camera_optical'
SCENE = SyntheticSceneConfig(seed=1, width=WIDTH, height=HEIGHT, focal=525 * HEIGHT / 480,
                             n_train=16, n_test=4, texel_size=0.01)
WARMED = f'warmed up for {WIDTH}x{HEIGHT} images'


@pytest.fixture(scope='module')
def scene(tmp_path_factory):
    """(map path, query frames): a two-region map (two heads to compile)."""
    root = tmp_path_factory.mktemp('warm')
    cfg = mapping_config('tiny', image_height=HEIGHT, max_iterations=5, device='cpu',
                         encoder='random:0', regions=2, region_radius_m=0.01)
    scene_map = map_frames(list(generate_frames(SCENE, 'train')), cfg).scene_map
    assert scene_map.n_regions == 2
    path = root / 'two_regions.ace'
    save_map(str(path), scene_map)
    return path, list(generate_frames(SCENE, 'test'))


def _log(path: Path) -> str:
    return path.read_text(errors='replace')


def _after(text: str, marker: str, occurrence: int = 1) -> str:
    """`text` after the `occurrence`-th `marker` ('' if there are fewer)."""
    parts = text.split(marker)
    return marker.join(parts[occurrence:]) if len(parts) > occurrence else ''


def test_node_warms_up_before_its_first_pose(scene, tmp_path, make_node, spin_until,
                                             ros_env):
    map_path, frames = scene
    log_path = tmp_path / 'node.log'
    args = [str(Path(sys.executable).parent / 'localization_node'), '--ros-args',
            '-r', f'__ns:={NS}', '-p', f'map_path:={map_path}', '-p', 'tf_timeout:=0.0',
            '-p', "base_frame:=''", '-p', "odom_frame:=''", '-p', f'image_height:={HEIGHT}',
            '-p', 'device:=cpu', '-p', 'encoder:=random:0', '-p', 'min_inliers:=4']
    env = dict(ros_env, RCUTILS_LOGGING_BUFFERED_STREAM='0')
    with open(log_path, 'w') as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        probe = make_node('warm_probe')
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        image_pub = probe.create_publisher(Image, f'{NS}/image', reliable)
        info_pub = probe.create_publisher(CameraInfo, f'{NS}/camera_info', reliable)
        poses, diags = [], []
        probe.create_subscription(
            PoseStamped, f'{NODE}/pose',
            lambda m: poses.append((conversions.stamp_to_ns(m.header.stamp), time.time_ns())),
            50)
        probe.create_subscription(DiagnosticArray, '/diagnostics', diags.append, 50)
        reload = probe.create_client(Trigger, f'{NODE}/reload_map')
        nodes = [probe]

        def info(stamp) -> CameraInfo:
            msg = CameraInfo(width=WIDTH, height=HEIGHT, distortion_model='plumb_bob',
                             d=[0.0] * 5, k=frames[0].K.ravel().tolist())
            msg.header.stamp, msg.header.frame_id = stamp, CAMERA_FRAME
            return msg

        assert spin_until(nodes, lambda: image_pub.get_subscription_count() > 0
                          and info_pub.get_subscription_count() > 0
                          or process.poll() is not None, 120), _log(log_path)
        assert process.poll() is None, _log(log_path)

        # 1. CameraInfo alone: the node compiles for its size before any image comes.
        deadline = time.monotonic() + 120
        while WARMED not in _log(log_path) and time.monotonic() < deadline:
            info_pub.publish(info(conversions.ns_to_stamp(time.time_ns())))
            spin_until(nodes, lambda: WARMED in _log(log_path), 1.0)
        text = _log(log_path)
        assert WARMED in text and '2 region head(s)' in text, text
        assert 'compiled the encoder' in text.split(WARMED)[0], text
        assert text.split(WARMED)[0].count('compiled the head') == 2, text  # every region's

        def diagnostic() -> dict:
            return latest_values(diags, 'localization_node: localization')

        assert spin_until(nodes, lambda: diagnostic().get('warmed_up_for') == '160x120', 10)
        assert float(diagnostic()['warm_up_s']) > 0

        # 2. Images one at a time: the first pose comes as fast as the rest, and nothing
        #    compiles while they stream.
        latencies = []
        for i in range(8):
            stamp_ns = time.time_ns()
            stamp = conversions.ns_to_stamp(stamp_ns)
            info_pub.publish(info(stamp))
            image_pub.publish(conversions.rgb_to_image(frames[i % len(frames)].image, stamp,
                                                       CAMERA_FRAME))
            assert spin_until(nodes, lambda: any(s == stamp_ns for s, _ in poses), 20), \
                _log(log_path)
            latencies.append(next(r - s for s, r in poses if s == stamp_ns) / 1e9)
        rest = statistics.median(latencies[1:])
        assert latencies[0] <= 2 * rest + 0.4, (latencies, _log(log_path))
        assert 'compiled the' not in _after(_log(log_path), WARMED), _log(log_path)

        # 3. ~/reload_map with the camera's size known: the new map is warmed up before it
        #    replaces the old one, so its first image compiles nothing either.
        future = reload.call_async(Trigger.Request())
        assert spin_until(nodes, future.done, 120), _log(log_path)
        assert future.result().success, future.result().message
        reloaded = _after(_log(log_path), WARMED)
        assert WARMED in reloaded and 'loaded map' in reloaded.split(WARMED)[1], reloaded
        stamp_ns = time.time_ns()
        stamp = conversions.ns_to_stamp(stamp_ns)
        info_pub.publish(info(stamp))
        image_pub.publish(conversions.rgb_to_image(frames[0].image, stamp, CAMERA_FRAME))
        assert spin_until(nodes, lambda: any(s == stamp_ns for s, _ in poses), 20), \
            _log(log_path)
        assert 'compiled the' not in _after(_log(log_path), WARMED, 2), _log(log_path)
    finally:
        if process.poll() is None:
            process.send_signal(2)  # SIGINT: a clean shutdown
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
