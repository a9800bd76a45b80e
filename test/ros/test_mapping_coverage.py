"""mapping_node's coverage feedback: /diagnostics values and the ~/coverage cloud.

The node runs as a separate process (tiny settings, random encoder); a feeder streams the
synthetic room's images with poses of its own: four views turning in place at one spot,
then four looking one way along a line 2 m away. The coverage values grow as they come,
~/coverage (latched) holds one point per visited voxel, and deactivating removes the
topic. The saturation message is checked in-process on `mapping_report`.
"""

from __future__ import annotations

import math
from pathlib import Path
import signal
import subprocess
import sys
from types import SimpleNamespace

from ace_ros.core.coverage import CoverageSummary
from ace_ros.data.synthetic import generate_frames, SyntheticSceneConfig
from ace_ros.ros import conversions, diagnostics
from ace_ros.ros.mapping_diagnostics import mapping_report
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from lifecycle_msgs.srv import ChangeState
import numpy as np
import pytest
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
import yaml

SCENE = SyntheticSceneConfig(seed=3, width=160, height=120, focal=140.0, n_train=8, n_test=1,
                             texel_size=0.01)
SETTINGS = {
    'preset': 'tiny', 'device': 'cpu', 'encoder': 'random:0', 'image_height': 64,
    'samples_per_image': 64, 'batch_size': 256, 'max_iterations': 10,
    'min_translation_m': 0.0, 'min_rotation_deg': 0.0, 'image_qos': 'reliable',
    'diagnostics_period': 0.3, 'idle_timeout_s': 0.0, 'save_keyframes_before_training': False,
}
RELIABLE = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
T0_NS = 100 * 1_000_000_000
PERIOD_NS = 200_000_000


def looking(centre, yaw_deg: float) -> np.ndarray:
    """world_from_cam at `centre`, the optical axis level (world z up) at `yaw_deg`."""
    yaw = math.radians(yaw_deg)
    z = np.array([math.cos(yaw), math.sin(yaw), 0.0])    # optical axis
    y = np.array([0.0, 0.0, -1.0])                        # image down = world down
    pose = np.eye(4)
    pose[:3, :3] = np.stack([np.cross(y, z), y, z], axis=1)
    pose[:3, 3] = centre
    return pose


#: Four views turning in place, then four along +x 2 m away, looking along +x.
POSES = ([looking([0.1, 0.1, 0.1], yaw) for yaw in (0, 90, 180, 270)]
         + [looking([2.1 + 0.3 * i, 0.1, 0.1], 0) for i in range(4)])


def _values(arrays) -> dict:
    """The newest mapping_node 'mapping' status's key values ({} before the first)."""
    return diagnostics.latest_values(arrays, 'mapping_node: mapping')


def test_coverage_grows_in_diagnostics_and_on_the_cloud(tmp_path: Path, ros_env, make_node,
                                                        spin_until):
    frames = list(generate_frames(SCENE, 'train'))
    params_file = tmp_path / 'params.yaml'
    params_file.write_text(yaml.safe_dump({'mapping_node': {'ros__parameters': {
        **SETTINGS, 'map_path': str(tmp_path / 'room.ace')}}}))
    log_path = tmp_path / 'mapping_node.log'
    with open(log_path, 'w') as log:
        proc = subprocess.Popen([sys.executable, '-m', 'ace_ros.ros.mapping_node',
                                 '--ros-args', '--params-file', str(params_file)],
                                env=ros_env, cwd=tmp_path, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        feeder = make_node('coverage_feeder')
        arrays, clouds = [], []
        feeder.create_subscription(DiagnosticArray, '/diagnostics', arrays.append, 10)
        feeder.create_subscription(PointCloud2, '/mapping_node/coverage', clouds.append,
                                   LATCHED)
        image_pub = feeder.create_publisher(Image, 'image', RELIABLE)
        info_pub = feeder.create_publisher(CameraInfo, 'camera_info', RELIABLE)
        pose_pub = feeder.create_publisher(PoseStamped, 'pose', RELIABLE)
        change = feeder.create_client(ChangeState, '/mapping_node/change_state')
        # The node process imports torch first: slow on a loaded machine.
        assert spin_until([feeder], lambda: all(
            p.get_subscription_count() > 0 for p in (image_pub, info_pub, pose_pub))
            or proc.poll() is not None, 120.0), log_path.read_text()
        assert proc.poll() is None, log_path.read_text()
        info = CameraInfo(width=SCENE.width, height=SCENE.height,
                          k=frames[0].K.ravel().tolist(), distortion_model='plumb_bob',
                          d=[0.0] * 5)
        info.p = np.hstack([frames[0].K, np.zeros((3, 1))]).ravel().tolist()

        def send(indices) -> None:
            for i in indices:
                stamp = conversions.ns_to_stamp(T0_NS + i * PERIOD_NS)
                info.header.stamp = stamp
                info_pub.publish(info)
                pose_pub.publish(conversions.to_pose_stamped(POSES[i], stamp, 'map'))
                image_pub.publish(conversions.rgb_to_image(frames[i].image, stamp,
                                                           'camera_optical_frame'))

        def at(keyframes: int) -> bool:
            return _values(arrays).get('keyframes') == str(keyframes)

        def cloud_of(points: int) -> bool:
            return bool(clouds) and clouds[-1].width == points

        send(range(4))
        assert spin_until([feeder], lambda: at(4) and cloud_of(1), 30.0), log_path.read_text()
        first = _values(arrays)
        assert first['coverage_voxels'] == '1' and first['coverage_view_cells'] == '4', first
        assert float(first['path_length_m']) == 0.0 and first['coverage_new_recent'] == '4'
        assert clouds[-1].header.frame_id == 'map'
        assert [f.name for f in clouds[-1].fields] == ['x', 'y', 'z', 'rgb']

        send(range(4, 8))
        assert spin_until([feeder], lambda: at(8) and cloud_of(5), 30.0), log_path.read_text()
        second = _values(arrays)
        assert second['coverage_voxels'] == '5' and second['coverage_view_cells'] == '8', second
        assert float(second['path_length_m']) == pytest.approx(2.9, abs=1e-3)
        assert second['coverage_saturating'] == 'False'
        assert 'Traceback' not in log_path.read_text()

        # Deactivate: the coverage topic goes with the subscriptions (node_base).
        assert feeder.count_publishers('/mapping_node/coverage') == 1
        assert spin_until([feeder], change.service_is_ready, 10.0)
        request = ChangeState.Request()
        request.transition.label = 'deactivate'
        future = change.call_async(request)
        assert spin_until([feeder], future.done, 30.0) and future.result().success
        assert spin_until([feeder], lambda: feeder.count_publishers(
            '/mapping_node/coverage') == 0, 10.0), log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _stub_session(state: str, coverage: CoverageSummary, median_error_px: float = math.nan):
    counts = {'images': 40, 'poses': 40, 'no_pose': 0}
    status = SimpleNamespace(
        state=state, keyframes=40, pending=0, queued=0, encoded=40, buffer_cells=4096,
        counts=counts, progress=None, keyframes_dir=None, error='', warm_iterations=0,
        warm_median_error_px=math.nan, median_error_px=median_error_px, coverage=coverage)
    return SimpleNamespace(status=lambda: status,
                           online=SimpleNamespace(train_while_collecting=False))


def test_report_says_when_coverage_saturates():
    growing = CoverageSummary(40, 6, 30, 0.25, 4.0, 3, 30, False)
    report = mapping_report(_stub_session('collecting', growing))
    assert (report.level, report.message) == (diagnostics.OK, 'collecting keyframes')
    assert report.values['coverage_new_recent'] == 3 and report.values['path_length_m'] == 4.0
    assert 'median_error_px' not in report.values
    saturated = CoverageSummary(70, 6, 30, 0.25, 9.0, 0, 30, True)
    report = mapping_report(_stub_session('collecting', saturated))
    assert 'coverage saturating' in report.message and '~/finish' in report.message
    assert report.values['coverage_saturating'] is True
    # Training: no hint, and the training's latest median error is reported.
    report = mapping_report(_stub_session('training', saturated, median_error_px=3.5))
    assert report.message == 'training' and report.values['median_error_px'] == 3.5
