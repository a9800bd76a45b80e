"""localization_node's ~/map_cloud over real rclpy: latched, in the map frame, per map load.

A node process is started on a map with a known cloud; a subscriber that joins after the
map was loaded (as RViz started later would) still gets it (transient local). A reload onto
a map without a cloud publishes an empty one, so the old cloud is not left shown.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
import subprocess
import sys
import time

from ace_ros.core.config import mapping_config
from ace_ros.core.mapfile import MapCloud, save_map
from ace_ros.core.mapper import map_frames
from ace_ros.data.synthetic import SyntheticSceneConfig, generate_frames
import numpy as np
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2
from std_srvs.srv import Trigger

HEIGHT, WIDTH = 120, 160
NS = '/cloud_test'
NODE = f'{NS}/localization_node'
SCENE = SyntheticSceneConfig(seed=1, width=WIDTH, height=HEIGHT, focal=525 * HEIGHT / 480,
                             n_train=4, n_test=0, texel_size=0.01)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


def _wait_log(log_path: Path, text: str, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in log_path.read_text(errors='replace'):
            return True
        time.sleep(0.1)
    return False


def test_map_cloud_is_latched_in_the_map_frame_and_replaced_on_reload(
        tmp_path, make_node, spin_until, ros_env):
    cfg = mapping_config('tiny', image_height=HEIGHT, max_iterations=2, device='cpu',
                         encoder='random:0')
    plain = map_frames(list(generate_frames(SCENE, 'train')), cfg).scene_map
    rng = np.random.default_rng(0)
    cloud = MapCloud(rng.normal(size=(300, 3)), rng.integers(0, 256, (300, 3), np.uint8))
    with_cloud, without_cloud = tmp_path / 'cloud.ace', tmp_path / 'plain.ace'
    save_map(str(with_cloud), dataclasses.replace(plain, cloud=cloud))
    save_map(str(without_cloud), dataclasses.replace(plain, cloud=None))
    map_path, log_path = tmp_path / 'room.ace', tmp_path / 'node.log'
    map_path.write_bytes(with_cloud.read_bytes())
    args = [str(Path(sys.executable).parent / 'localization_node'), '--ros-args',
            '-r', f'__ns:={NS}', '-p', f'map_path:={map_path}', '-p', 'map_frame:=room',
            '-p', f'image_height:={HEIGHT}', '-p', 'device:=cpu', '-p', 'encoder:=random:0']
    with open(log_path, 'w') as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                   env=dict(ros_env, RCUTILS_LOGGING_BUFFERED_STREAM='0'))
    try:
        assert _wait_log(log_path, 'loaded map'), log_path.read_text()
        # Joins after the publish: transient local hands it the cloud all the same.
        probe = make_node('cloud_probe')
        clouds = []
        probe.create_subscription(PointCloud2, f'{NODE}/map_cloud', clouds.append, LATCHED)
        assert spin_until([probe], lambda: clouds, 30), log_path.read_text()
        msg = clouds[0]
        assert msg.header.frame_id == 'room'
        assert (msg.height, msg.width, msg.point_step) == (1, 300, 16)
        assert [f.name for f in msg.fields] == ['x', 'y', 'z', 'rgb']
        rows = np.frombuffer(bytes(msg.data), dtype=[('xyz', '<f4', 3), ('rgb', '<u4')])
        np.testing.assert_array_equal(rows['xyz'], cloud.points)
        colors = cloud.colors.astype(np.uint32)
        assert rows['rgb'].tolist() == (colors[:, 0] << 16 | colors[:, 1] << 8
                                        | colors[:, 2]).tolist()

        # A map without a cloud: an empty cloud replaces the old one.
        map_path.write_bytes(without_cloud.read_bytes())
        reload = probe.create_client(Trigger, f'{NODE}/reload_map')
        assert spin_until([probe], reload.service_is_ready, 30)
        future = reload.call_async(Trigger.Request())
        assert spin_until([probe], future.done, 30) and future.result().success
        assert spin_until([probe], lambda: len(clouds) >= 2, 30)
        assert clouds[-1].width == 0 and clouds[-1].header.frame_id == 'room'
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
