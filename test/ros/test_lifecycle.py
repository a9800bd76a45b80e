"""Both nodes as managed (lifecycle) nodes, as separate processes over real rclpy.

With autostart false a node starts unconfigured and takes no input; a client drives the
transitions with lifecycle_msgs/srv/ChangeState (as `ros2 lifecycle set` or nav2's lifecycle
manager would) and reads them back with GetState: configure (a refused parameter fails it,
named), activate (images give poses, the latched map cloud comes), deactivate (no more
poses, the subscriptions are gone), cleanup and configure again, shutdown (the process
ends). With autostart true (the default) the node is active by itself. The tiny map and the
random encoder make poorly placed poses: the checks are the states and what flows.
"""

from __future__ import annotations

from pathlib import Path
import subprocess
import sys
import time
from typing import Optional

from ace_ros.core.config import mapping_config
from ace_ros.core.mapfile import load_map, save_map
from ace_ros.core.mapper import map_frames
from ace_ros.data.synthetic import SyntheticSceneConfig, generate_frames
from ace_ros.ros import conversions
from ace_ros.ros.diagnostics import latest_values
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from lifecycle_msgs.srv import ChangeState, GetState
import pytest
from rclpy.parameter import Parameter
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter_client import AsyncParameterClient
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_srvs.srv import Trigger

HEIGHT, WIDTH = 120, 160
S = 1_000_000_000
CAMERA_FRAME = 'test_camera_optical'
LOC_SETTINGS = dict(image_height=HEIGHT, device='cpu', encoder='random:0', min_inliers=4)
MAPPING_SETTINGS = dict(preset='tiny', device='cpu', encoder='random:0', image_height=64,
                        samples_per_image=64, batch_size=256, max_iterations=10,
                        min_translation_m=0.0, min_rotation_deg=0.0, image_qos='reliable',
                        diagnostics_period=0.3, idle_timeout_s=0.0)
SCENE = SyntheticSceneConfig(seed=1, width=WIDTH, height=HEIGHT, focal=525 * HEIGHT / 480,
                             n_train=8, n_test=2, texel_size=0.01)
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


@pytest.fixture(scope='module')
def scene(tmp_path_factory):
    """(map path, train frames, query frames); a tiny map made by the engine."""
    root = tmp_path_factory.mktemp('lifecycle')
    cfg = mapping_config('tiny', image_height=HEIGHT, max_iterations=5, device='cpu',
                         encoder='random:0')
    train = list(generate_frames(SCENE, 'train'))
    path = root / 'room.ace'
    save_map(str(path), map_frames(train, cfg).scene_map)
    return path, train, list(generate_frames(SCENE, 'test'))


class Process:
    """A node executable in a subprocess, its output in a log file."""

    def __init__(self, executable: str, ns: str, settings: dict, log_path: Path,
                 env: dict) -> None:
        args = [str(Path(sys.executable).parent / executable), '--ros-args',
                '-r', f'__ns:={ns}']
        for name, value in settings.items():
            args += ['-p', f'{name}:={value}']
        self.log_path = log_path
        with open(log_path, 'w') as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=log_path.parent,
                                         env=dict(env, RCUTILS_LOGGING_BUFFERED_STREAM='0'))

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors='replace')

    def logged(self, text: str, count: int = 1, timeout_s: float = 10.0) -> bool:
        """`text` is in the log `count` times, within `timeout_s` (a reply can come before
        the line that goes with it reaches the file)."""
        deadline = time.monotonic() + timeout_s
        while self.log.count(text) < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Lifecycle:
    """The client side of a managed node: GetState and ChangeState, by label."""

    def __init__(self, node, name: str, spin_until, process: Process) -> None:
        self._node, self._spin, self._process = node, spin_until, process
        self._get = node.create_client(GetState, f'{name}/get_state')
        self._change = node.create_client(ChangeState, f'{name}/change_state')
        # A node process imports torch before its services exist: slow on a loaded machine.
        assert spin_until([node], lambda: self._get.service_is_ready()
                          and self._change.service_is_ready(), 120), process.log

    def _call(self, client, request, timeout_s: float = 60.0):
        future = client.call_async(request)
        assert self._spin([self._node], future.done, timeout_s), self._process.log
        return future.result()

    def state(self) -> str:
        return self._call(self._get, GetState.Request()).current_state.label

    def set(self, transition: str) -> bool:
        """Request the transition 'configure', 'activate', ...; did it succeed?"""
        request = ChangeState.Request()
        request.transition.label = transition
        return self._call(self._change, request).success

    def shut_down(self, probe, timeout_s: float = 20.0) -> Optional[int]:
        """Request 'shutdown' and wait for the process to end; its exit code (None: it
        did not end). The reply may not outlive the process, so none is awaited."""
        request = ChangeState.Request()
        request.transition.label = 'shutdown'
        self._change.call_async(request)
        deadline = time.monotonic() + timeout_s
        while self._process.proc.poll() is None and time.monotonic() < deadline:
            _quiet(self._spin, probe, 0.1)
        return self._process.proc.poll()


def _quiet(spin_until, node, seconds: float) -> None:
    spin_until([node], lambda: False, seconds)


def test_localization_node_transitions(scene, make_node, spin_until, ros_env, tmp_path):
    map_path, _, queries = scene
    ns = '/lifecycle_loc'
    name = f'{ns}/localization_node'
    process = Process('localization_node', ns, dict(
        LOC_SETTINGS, map_path=map_path, autostart='false', tf_timeout=0.0,
        base_frame="''", odom_frame="''"), tmp_path / 'node.log', ros_env)
    try:
        probe = make_node('lifecycle_loc_probe')
        image_pub = probe.create_publisher(Image, f'{ns}/image', RELIABLE)
        info_pub = probe.create_publisher(CameraInfo, f'{ns}/camera_info', RELIABLE)
        poses, clouds = [], []
        probe.create_subscription(PoseStamped, f'{name}/pose', poses.append, 10)
        probe.create_subscription(PointCloud2, f'{name}/map_cloud', clouds.append, LATCHED)
        lifecycle = Lifecycle(probe, name, spin_until, process)

        def send(sec: int) -> None:
            stamp = conversions.ns_to_stamp(sec * S)
            info = CameraInfo(width=WIDTH, height=HEIGHT, k=queries[0].K.ravel().tolist())
            info.header.stamp, info.header.frame_id = stamp, CAMERA_FRAME
            info_pub.publish(info)
            image_pub.publish(conversions.rgb_to_image(queries[0].image, stamp, CAMERA_FRAME))

        def subscribed() -> bool:
            return image_pub.get_subscription_count() > 0 and \
                info_pub.get_subscription_count() > 0

        def poses_flow(sec: int) -> bool:
            """Images stamped `sec` are sent until one gives a pose (those that arrive while
            the node warms up are dropped: up to ~30 s on a loaded machine)."""
            for _ in range(40):
                send(sec)
                if spin_until([probe], lambda: any(
                        conversions.stamp_to_ns(p.header.stamp) == sec * S for p in poses), 3):
                    return True
            return False

        def no_poses(sec: int) -> None:
            """Images stamped `sec` are sent for a while: none gives a pose."""
            n = len(poses)
            for _ in range(4):
                send(sec)
                _quiet(spin_until, probe, 0.5)
            assert len(poses) == n, process.log

        # 1. Unconfigured: no map, no subscriptions, no poses.
        assert lifecycle.state() == 'unconfigured'
        assert process.logged('autostart is false'), process.log
        no_poses(1)
        assert not subscribed() and 'loaded map' not in process.log

        # 2. configure refuses a bad parameter by name and stays unconfigured; a good one
        #    gives inactive: the map is loaded, but still no subscriptions and no output.
        params = AsyncParameterClient(probe, name)
        assert spin_until([probe], params.services_are_ready, 10)

        def set_mode(value: str) -> None:
            done = params.set_parameters([Parameter('mode', value=value)])
            assert spin_until([probe], done.done, 10) and done.result().results[0].successful

        set_mode('sometimes')
        assert not lifecycle.set('configure')
        assert lifecycle.state() == 'unconfigured'
        assert process.logged("configure failed: invalid parameters: parameter mode must be "
                              "one of ['continuous', 'on_demand'], got 'sometimes'"), process.log
        set_mode('continuous')
        assert lifecycle.set('configure'), process.log
        assert lifecycle.state() == 'inactive'
        assert process.logged('loaded map'), process.log
        no_poses(2)
        assert not subscribed() and not clouds

        # 3. activate: subscribed, the latched cloud comes, images give poses.
        assert lifecycle.set('activate'), process.log
        assert lifecycle.state() == 'active'
        assert spin_until([probe], subscribed, 10)
        assert spin_until([probe], lambda: clouds, 10), process.log
        assert poses_flow(3), process.log

        # 4. deactivate: the subscriptions go, no more poses.
        assert lifecycle.set('deactivate')
        assert lifecycle.state() == 'inactive'
        assert spin_until([probe], lambda: not subscribed(), 10)
        no_poses(4)

        # 5. cleanup frees the map; configure and activate again: poses again.
        assert lifecycle.set('cleanup')
        assert lifecycle.state() == 'unconfigured'
        assert process.logged('cleaned up'), process.log
        assert lifecycle.set('configure') and lifecycle.set('activate'), process.log
        assert lifecycle.state() == 'active'
        assert process.logged('loaded map', 2) and process.log.count('loaded map') == 2
        assert spin_until([probe], subscribed, 10)
        assert poses_flow(5), process.log

        # 6. shutdown from active: finalized, and the process ends cleanly.
        assert lifecycle.shut_down(probe) == 0, process.log
        assert 'shut down (from active)' in process.log
        assert 'Traceback' not in process.log and 'localization failed' not in process.log
    finally:
        process.stop()


def test_localization_node_autostart_is_active_by_itself(scene, make_node, spin_until,
                                                         ros_env, tmp_path):
    map_path = scene[0]
    ns = '/lifecycle_auto'
    process = Process('localization_node', ns, dict(LOC_SETTINGS, map_path=map_path),
                      tmp_path / 'node.log', ros_env)
    try:
        probe = make_node('lifecycle_auto_probe')
        lifecycle = Lifecycle(probe, f'{ns}/localization_node', spin_until, process)
        assert spin_until([probe], lambda: 'active: processing images' in process.log, 30)
        assert lifecycle.state() == 'active'
        assert 'autostart is false' not in process.log
        # Shutdown from inactive too (deactivate first).
        assert lifecycle.set('deactivate')
        assert lifecycle.shut_down(probe) == 0, process.log
        assert 'shut down (from inactive)' in process.log
    finally:
        process.stop()


def test_mapping_node_transitions(scene, make_node, spin_until, ros_env, tmp_path):
    """Unconfigured: no inputs; configure + activate: keyframes are collected; deactivate:
    images are no longer taken; ~/finish while inactive trains and writes the map."""
    _, train, _ = scene
    ns = '/lifecycle_map'
    name = f'{ns}/mapping_node'
    map_path = tmp_path / 'room.ace'
    process = Process('mapping_node', ns, dict(MAPPING_SETTINGS, map_path=map_path,
                                               autostart='false'),
                      tmp_path / 'mapping.log', ros_env)
    try:
        probe = make_node('lifecycle_map_probe')
        image_pub = probe.create_publisher(Image, f'{ns}/image', RELIABLE)
        info_pub = probe.create_publisher(CameraInfo, f'{ns}/camera_info', RELIABLE)
        pose_pub = probe.create_publisher(PoseStamped, f'{ns}/pose', RELIABLE)
        diags = []
        probe.create_subscription(DiagnosticArray, '/diagnostics', diags.append, 10)
        finish = probe.create_client(Trigger, f'{name}/finish')
        lifecycle = Lifecycle(probe, name, spin_until, process)

        def keyframes() -> int:
            return int(latest_values(diags, 'mapping_node: mapping').get('keyframes', -1))

        def send(i: int) -> None:
            stamp = conversions.ns_to_stamp(100 * S + i * S // 5)
            info = CameraInfo(width=WIDTH, height=HEIGHT, k=train[i].K.ravel().tolist())
            info.header.stamp, info.header.frame_id = stamp, 'camera_optical_frame'
            info_pub.publish(info)
            pose_pub.publish(conversions.to_pose_stamped(train[i].world_from_cam, stamp,
                                                         'map'))
            image_pub.publish(conversions.rgb_to_image(train[i].image, stamp,
                                                       'camera_optical_frame'))

        def subscribed() -> bool:
            return all(p.get_subscription_count() > 0 for p in (image_pub, info_pub, pose_pub))

        # Unconfigured: no encoder, no subscriptions, no ~/finish, no diagnostics.
        assert lifecycle.state() == 'unconfigured'
        _quiet(spin_until, probe, 1.0)
        assert not subscribed() and not finish.service_is_ready() and keyframes() == -1

        assert lifecycle.set('configure'), process.log
        assert lifecycle.state() == 'inactive'
        assert spin_until([probe], finish.service_is_ready, 10)
        assert spin_until([probe], lambda: keyframes() == 0, 10)
        assert not subscribed()

        assert lifecycle.set('activate'), process.log
        assert lifecycle.state() == 'active'
        assert spin_until([probe], subscribed, 10)
        for i in range(4):
            send(i)
        assert spin_until([probe], lambda: keyframes() == 4, 30), process.log

        assert lifecycle.set('deactivate')
        assert lifecycle.state() == 'inactive'
        assert spin_until([probe], lambda: not subscribed(), 10)
        for i in range(4, 8):
            send(i)
        _quiet(spin_until, probe, 1.5)
        assert keyframes() == 4

        future = finish.call_async(Trigger.Request())
        assert spin_until([probe], future.done, 10) and future.result().success, process.log
        assert process.proc.wait(120) == 0, process.log
        assert len(load_map(str(map_path)).frame_names) == 4
        assert 'Traceback' not in process.log
    finally:
        process.stop()


def test_mapping_node_cleanup_saves_keyframes_and_shutdown_from_unconfigured(
        scene, make_node, spin_until, ros_env, tmp_path):
    """cleanup while collecting saves the keyframes (as Ctrl-C does) and frees the
    session; shutdown from unconfigured ends the process."""
    _, train, _ = scene
    ns = '/lifecycle_map2'
    name = f'{ns}/mapping_node'
    map_path = tmp_path / 'room.ace'
    process = Process('mapping_node', ns, dict(MAPPING_SETTINGS, map_path=map_path),
                      tmp_path / 'mapping.log', ros_env)
    try:
        probe = make_node('lifecycle_map2_probe')
        image_pub = probe.create_publisher(Image, f'{ns}/image', RELIABLE)
        info_pub = probe.create_publisher(CameraInfo, f'{ns}/camera_info', RELIABLE)
        pose_pub = probe.create_publisher(PoseStamped, f'{ns}/pose', RELIABLE)
        lifecycle = Lifecycle(probe, name, spin_until, process)
        assert lifecycle.state() == 'active'  # autostart
        assert spin_until([probe], lambda: all(
            p.get_subscription_count() > 0 for p in (image_pub, info_pub, pose_pub)), 10)
        for i in range(3):
            stamp = conversions.ns_to_stamp(100 * S + i * S // 5)
            info = CameraInfo(width=WIDTH, height=HEIGHT, k=train[i].K.ravel().tolist())
            info.header.stamp = stamp
            info_pub.publish(info)
            pose_pub.publish(conversions.to_pose_stamped(train[i].world_from_cam, stamp,
                                                         'map'))
            image_pub.publish(conversions.rgb_to_image(train[i].image, stamp,
                                                       'camera_optical_frame'))
        _quiet(spin_until, probe, 2.0)  # the node takes them
        assert lifecycle.set('deactivate') and lifecycle.set('cleanup'), process.log
        assert lifecycle.state() == 'unconfigured'
        assert process.logged('cleaned up while collecting: 3 keyframes saved to'), process.log
        assert lifecycle.shut_down(probe) == 0, process.log
        assert 'shut down (from unconfigured)' in process.log
        assert 'Traceback' not in process.log
    finally:
        process.stop()


def test_cleanup_drops_the_model_and_empties_the_cuda_cache(scene, ros_context, tmp_path,
                                                            monkeypatch):
    """In-process nodes: after cleanup nothing holds the localizer / the mapping session
    (their encoders), and torch's CUDA cache is emptied (CUDA faked here: CPU only)."""
    import weakref

    from ace_ros.ros.localization_node import LocalizationNode
    from ace_ros.ros.mapping_node import MappingNode
    import torch
    emptied = []
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'is_initialized', lambda: True)
    monkeypatch.setattr(torch.cuda, 'empty_cache', lambda: emptied.append(1))

    def overrides(values: dict) -> list:
        return [Parameter(name, value=value) for name, value in values.items()]

    node = LocalizationNode(context=ros_context, parameter_overrides=overrides(dict(
        LOC_SETTINGS, map_path=str(scene[0]), autostart=False)))
    try:
        assert node._localizer is None and not node.configured
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        model = weakref.ref(node._localizer)
        assert model() is not None and node.configured and not node.active
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        assert model() is None and emptied, 'the localizer outlived cleanup'
    finally:
        node.destroy_node()

    emptied.clear()
    node = MappingNode(context=ros_context, parameter_overrides=overrides(dict(
        MAPPING_SETTINGS, map_path=str(tmp_path / 'room.ace'))))
    try:
        assert node.active  # autostart
        session = weakref.ref(node.session)
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        assert session() is None and emptied, 'the mapping session outlived cleanup'
    finally:
        node.destroy_node()
