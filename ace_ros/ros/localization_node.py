"""localization_node: camera images in, the robot's pose in the map frame out (REP-105).

Subscribes `image` + `camera_info` (sensor-data QoS unless `image_qos` is 'reliable'); a
worker thread localizes only the newest image (`LatestSlot`: one slot, older unprocessed
images are dropped and counted, so latency never builds up); publishes, only for poses that
pass `min_confidence`, `~/pose` and `~/pose_with_covariance` of `base_frame` and TF;
`/diagnostics`; `~/reload_map` (std_srvs/Trigger) re-reads the parameters and the map file.
At each map load, `~/map_cloud` (sensor_msgs/PointCloud2, transient local: RViz gets it when
it joins later) is the map's scene points in the map frame; empty for a map without them.

TF, as AMCL does (REP-105: map -> odom -> base_link -> ... -> camera optical frame; the
output side is `ace_ros.ros.pose_output.PoseOutput`):
- The engine gives map -> camera. `base_frame` -> camera (the mount: URDF and
  robot_state_publisher) and `odom_frame` -> `base_frame` are looked up at the image stamp;
  ~/pose is map -> base, and TF is map -> odom, future-dated by `transform_tolerance` and
  re-broadcast at `tf_broadcast_rate` (stamps never go backwards; they restart when
  time jumps back, below).
- Fallbacks, each logged (a warning) when it starts: no odom frame linked to the base in TF
  (a hand-held camera, a robot without odometry): map -> base, at the image stamp. Base frame
  not linked to the camera in TF (no mount published): ~/pose and TF are of the camera
  frame itself.
- A frame that already has a parent in TF is never given a second one: when the frame the
  node would publish (odom, base or camera) has a parent other than the map frame, no TF is
  sent, only the pose topics, and the log says so.
- `odom_frame` and `base_frame` both '' : map -> camera with no lookups, the old hand-held
  behaviour, for a camera with no TF tree.

Time going back by more than `time_jump_threshold` (1 s), seen in the image stamps or on
the node's clock (a bag looped, simulated time reset): the TF buffer (dynamic transforms),
map -> odom and the last pose are cleared, a warning says why (once per jump, even when
both the stamps and /clock show it), `time_jumps` counts it in /diagnostics, and the node
goes on from the new time; a frame that was being localized meanwhile, and the image whose
stamp showed the jump, publish nothing (`discarded_stale`, as after a map reload). The
counters are one thread-safe `Counters` (`ace_ros.ros.timing`), fed by the image callback
and the worker.

Controls (the state and the gate are ROS-free, in `ace_ros.ros.controls`; the services in
`ace_ros.ros.control_services`): `mode` 'continuous' or 'on_demand' (only the first image
after each ~/trigger), `~/pause` / `~/resume` (paused: nothing is localized, map -> odom is
still re-broadcast), `~/reset` (forgets the last pose, map -> odom, the initialpose and a
pending trigger), and `initialpose` (RViz's 2D Pose Estimate, in the map frame, of the frame
~/pose is of): a gate, not a seed. Until a localized pose lies within `initialpose_gate_m`
(map x-y plane) and `initialpose_gate_deg` (heading) of it, poses publish nothing (`gated`);
the first that does lifts the gate. With odometry the prior is carried along as map -> odom.

Life cycle (a managed node, `ace_ros.ros.node_base.AceNode`; `autostart`, default true,
goes through configure and activate at start-up): configure reads and checks the parameters
(a refused value fails the transition, named), creates the outputs and services and loads
the map (a map that cannot be loaded is logged and the node stays configured without one,
as ~/reload_map allows); activate subscribes to `image` and `camera_info`, starts the map ->
odom re-broadcast and publishes the map cloud (pose and cloud publishers are lifecycle
publishers); deactivate unsubscribes, and a frame being localized publishes nothing
(`skipped_inactive`); cleanup stops the worker and drops the map and the encoder.

Warm-up: the first frame of an image size pays for compiling the encoder and every region's
head (OpenVINO; ~1.5 s per head on 2 cores), which would otherwise be spread over the first
frames that use each region, stalling the stream several times. So before the first image
of a size is localized, the worker runs `Localizer.warm_up` on a blank frame of that size:
as soon as a CameraInfo gives it (before the first image, when camera_info comes first), or
on the first image's own size; a map loaded by ~/reload_map is warmed up before it replaces
the old one when the camera's size is known. Images arriving meanwhile are dropped as
stale (the newest waits); /diagnostics reports `warm_up_s` and the size it was for.

The pose covariance follows the pose: the camera pose's (`conversions.
covariance_from_confidence`) is moved to the base with `conversions.offset_pose_covariance`.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, Dict, Optional, Tuple

from ace_ros.core.config import LocalizationConfig
from ace_ros.core.localizer import Localizer
from ace_ros.core.mapfile import load_map
from ace_ros.core.runtime import make_runtime, Runtime
from ace_ros.core.types import Frame
from ace_ros.data.calibration import calibration_inputs
from ace_ros.ros import conversions, diagnostics, node_base, params
from ace_ros.ros.control_services import ControlServices
from ace_ros.ros.controls import Controls, PoseGate
from ace_ros.ros.diagnostics import Report
from ace_ros.ros.params import ParamSpec
from ace_ros.ros.pose_output import PoseOutput
from ace_ros.ros.tf import TfInterface
from ace_ros.ros.timing import Counters, LatestSlot, TimeJumpGuard, WarmUps
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import JumpThreshold, TimeJump
from rclpy.duration import Duration
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_srvs.srv import Trigger

NODE_PARAMS: Dict[str, ParamSpec] = {
    'map_path': ParamSpec('', 'map file (.ace) loaded at start and by ~/reload_map'),
    'map_frame': ParamSpec('', "frame of the published poses; '' = the map file's world "
                           'frame id'),
    'odom_frame': ParamSpec('odom', 'TF is map -> odom_frame (odom -> base looked up at the '
                            'image stamp), as AMCL does; without this frame in TF: map -> '
                            "base; '' with base_frame '' = map -> camera (no TF tree)"),
    'base_frame': ParamSpec('base_link', '~/pose is of this frame (base -> camera, the '
                            "mount, from TF; not in TF: of the camera); '' = the camera "
                            'frame'),
    'camera_frame': ParamSpec('', "camera optical frame; '' = the image's header.frame_id"),
    'publish_tf': ParamSpec(True, 'broadcast the pose on /tf'),
    'transform_tolerance': ParamSpec(0.1, 'map -> odom is future-dated by this (s) so that '
                                     'lookups at the newest odometry succeed'),
    'tf_broadcast_rate': ParamSpec(20.0, 'map -> odom is re-broadcast at this rate (Hz) '
                                   'between poses; 0 = only with each new pose'),
    'tf_timeout': ParamSpec(0.1, 'how long to wait for odom/base -> camera at the image '
                            'stamp (s)'),
    'tf_cache_duration': ParamSpec(10.0, 'seconds of TF history kept for lookups'),
    'min_confidence': ParamSpec(0.0, 'poses with a lower RANSAC confidence (0..1, 0.63 at '
                                '500 inliers) publish nothing and are counted as rejected'),
    'max_rate': ParamSpec(0.0, 'localize at most this many images per second; 0 = as fast '
                          'as possible (only the newest image is ever processed)'),
    'image_qos': ParamSpec('sensor_data', "'sensor_data' (best effort) or 'reliable', for "
                           'image and camera_info (depth 1 either way)', read_only=True),
    'image_transport': ParamSpec('raw', "'raw' (sensor_msgs/Image on image) or 'compressed' "
                                 '(CompressedImage, jpeg/png, on image/compressed)',
                                 read_only=True),
    'image_is_rectified': ParamSpec(False, 'images are already rectified (image_rect): use '
                                    'camera_info P and skip undistortion'),
    'position_sigma': ParamSpec(0.05, 'position std dev (m) reported at confidence 1; it '
                                'grows as 1 / confidence'),
    'rotation_sigma': ParamSpec(0.035, 'rotation std dev (rad) reported at confidence 1'),
    'diagnostics_period': ParamSpec(1.0, '/diagnostics period (s, wall clock)',
                                    read_only=True),
    'time_jump_threshold': ParamSpec(1.0, 'image stamps or the clock going back by more '
                                     'than this (s; a bag looped, simulated time reset) '
                                     'clear the TF buffer and map -> odom', read_only=True),
    'mode': ParamSpec('continuous', "'continuous' (every image, the newest first) or "
                      "'on_demand' (only the first image after each ~/trigger); may be "
                      'changed while running'),
    'initialpose_gate_m': ParamSpec(1.0, 'after an initialpose, poses farther than this (m, '
                                    'in the map x-y plane) from it are rejected until one '
                                    'is near', read_only=True),
    'initialpose_gate_deg': ParamSpec(30.0, 'and poses whose heading differs more than this '
                                      '(deg; 180 = position only)', read_only=True),
    **node_base.LIFECYCLE_PARAMS,
}

#: What /diagnostics counts (one `Counters`, shared by the callbacks and the worker).
COUNTERS = ('received', 'processed', 'rejected', 'failed', 'bad_input', 'no_camera_info',
            'no_map', 'tf_failed', 'published', 'time_jumps', 'discarded_stale',
            'skipped_paused', 'skipped_untriggered', 'skipped_inactive', 'gated')


class LocalizationNode(node_base.AceNode):
    """Thin adapter: messages -> `Localizer` -> pose, covariance and TF messages.

    A managed node (`node_base.AceNode`): configure reads the parameters and loads the map;
    activate subscribes to the camera; deactivate unsubscribes (a frame being localized
    publishes nothing); cleanup drops the map and the encoder.
    """

    NODE_NAME = 'localization_node'
    EXECUTOR_THREADS = 2  # ~/reload_map (loading a map) must not hold up the images

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        params.declare_config(self, LocalizationConfig)
        params.declare_parameters(self, NODE_PARAMS)
        self._p = params.read_parameters(self, NODE_PARAMS)
        self._localizer: Optional[Localizer] = None
        self._map_path = ''
        self._runtimes: Dict[Tuple[str, str], Runtime] = {}
        self._camera_info: Optional[CameraInfo] = None
        self._rectifier: Optional[conversions.Rectifier] = None
        self._slot = LatestSlot()
        self._stop = threading.Event()
        self._worker: Optional[threading.Thread] = None
        self._counts = Counters(COUNTERS)
        self._input_rate = diagnostics.RateMeter()
        self._processed_rate = diagnostics.RateMeter()
        self._latency = diagnostics.WindowStats()
        self._inliers = diagnostics.WindowStats()
        self._last_inliers = 0
        self._cloud_msg: Optional[PointCloud2] = None
        self._may_load = False  # configured: ~/reload_map may load (not after cleanup)
        self._load_lock = threading.Lock()  # ~/reload_map against cleanup
        self._warm_ups = WarmUps()
        self.start_up()

    # -- life cycle ----------------------------------------------------------------------

    def configure_node(self) -> None:
        """Parameters (a refused one: ValueError by name), outputs, services, the map."""
        self._p = params.read_parameters(self, NODE_PARAMS)
        params.read_config(self, LocalizationConfig)  # refused settings fail configure
        threshold = self._p['time_jump_threshold']
        if threshold <= 0:
            raise ValueError(f'parameter time_jump_threshold must be > 0, got {threshold}')
        self._time_guard = TimeJumpGuard(int(threshold * 1e9))
        # Controls (ace_ros.ros.controls): bad values fail configure, by name.
        self._controls = Controls(self._p['mode'])
        self._gate = PoseGate(self._p['initialpose_gate_m'], self._p['initialpose_gate_deg'])
        self._image_qos = node_base.image_qos(self._p['image_qos'], depth=1)  # the newest
        self._image_input = conversions.image_subscription(self, self._p['image_transport'])
        own = self.until_cleanup
        self._tf = own(TfInterface(self, self._p['tf_cache_duration']))
        self._output = PoseOutput(
            self, self._tf, self._counts, self._gate,
            own(self.create_lifecycle_publisher(PoseStamped, '~/pose', 10)),
            own(self.create_lifecycle_publisher(PoseWithCovarianceStamped,
                                                '~/pose_with_covariance', 10)),
            params=lambda: self._p)
        # Latched: published once per map load (and on activate), and RViz may start later.
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._cloud_pub = own(self.create_lifecycle_publisher(PointCloud2, '~/map_cloud',
                                                              latched))
        self._diagnostics = own(diagnostics.Diagnostics(
            self, period_s=self._p['diagnostics_period']))
        self._diagnostics.add_task('localization', self._report)
        own(self.get_clock().create_jump_callback(
            JumpThreshold(min_forward=None, min_backward=Duration(seconds=-threshold),
                          on_clock_change=False), post_callback=self._on_clock_jump))
        own(self.create_service(Trigger, '~/reload_map', self._on_reload,
                                callback_group=MutuallyExclusiveCallbackGroup()))
        own(ControlServices(self, self._controls, self._gate, self._slot, self._output))
        self._may_load = True
        self._load_map()
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name='localizer', daemon=True)
        self._worker.start()

    def activate_node(self) -> None:
        """Subscribe to the camera; re-broadcast map -> odom; publish the map cloud."""
        image_type, image_topic = self._image_input
        own = self.until_deactivate
        self._image_sub = own(self.create_subscription(image_type, image_topic,
                                                       self._on_image, self._image_qos))
        self._info_sub = own(self.create_subscription(CameraInfo, 'camera_info',
                                                      self._on_camera_info, self._image_qos))
        if self._p['tf_broadcast_rate'] > 0:
            own(self.create_timer(1.0 / self._p['tf_broadcast_rate'], self._output.rebroadcast))

    def on_activate(self, state):
        result = super().on_activate(state)
        if self.active and self._cloud_msg is not None:  # lifecycle publishers are on now
            self._cloud_pub.publish(self._cloud_msg)
        return result

    def deactivate_node(self) -> None:
        """The subscriptions and the map -> odom re-broadcast go (node_base); an image
        waiting for the worker is dropped, one being localized publishes nothing
        (`skipped_inactive`)."""
        self._slot.take(timeout_s=0.0)

    def cleanup_node(self) -> None:
        """Stop the worker (it finishes the frame it is localizing); drop the map and the
        encoder (the services and publishers go in node_base)."""
        self._stop.set()
        if self._worker is not None:
            self._slot.close()
            self._worker.join(timeout=10.0)
            self._worker = None
            self._slot = LatestSlot()  # closed: a fresh one for the next configure
        with self._load_lock:
            self._may_load = False
            self._localizer, self._map_path, self._cloud_msg = None, '', None
            self._runtimes = {}
        self._camera_info, self._rectifier = None, None

    # -- map ---------------------------------------------------------------------------

    def _load_map(self) -> Tuple[bool, str]:
        """(success, message); on failure the previous map (if any) stays in use."""
        with self._load_lock:
            if not self._may_load:  # cleaned up meanwhile (a reload racing cleanup)
                return False, 'not configured'
            return self._load_map_locked()

    def _load_map_locked(self) -> Tuple[bool, str]:
        try:
            self._p = params.read_parameters(self, NODE_PARAMS)
            cfg = params.read_config(self, LocalizationConfig)
            path = self._p['map_path']
            if not path:
                raise ValueError('the map_path parameter is empty; set it to a map file '
                                 '(.ace) made by mapping_node or `ace-ros map`')
            scene_map = load_map(path)
            key = (cfg.encoder, cfg.device)
            if key not in self._runtimes:  # a reload keeps the encoder when it can
                self._runtimes = {key: make_runtime(cfg.device, cfg.encoder, calibration_inputs)}
            localizer = Localizer(scene_map, cfg, self._runtimes[key])
            self._warm_up_before_swap(localizer)
        except Exception as e:  # noqa: BLE001 - any bad map or setting must leave us running
            what = 'keeping the previous map' if self._localizer else \
                'not localizing until ~/reload_map succeeds'
            message = f'cannot load map: {e}'
            self.get_logger().error(f'{message} ({what})')
            return False, message
        map_frame = self._p['map_frame'] or scene_map.world_frame_id
        self._localizer, self._map_path = localizer, path
        self._output.new_map(map_frame, self._p['transform_tolerance'])
        # Empty for a map without a cloud, so that a reload does not leave the old one shown.
        cloud = scene_map.cloud
        self._cloud_msg = conversions.to_point_cloud2(
            cloud.points if cloud else np.zeros((0, 3)),
            cloud.colors if cloud else np.zeros((0, 3), np.uint8),
            self.get_clock().now().to_msg(), map_frame)
        self._cloud_pub.publish(self._cloud_msg)  # dropped while inactive: sent on activate
        message = (f"loaded map {path} (frame '{map_frame}', {len(scene_map.frame_names)} "
                   f'mapping frames) on {localizer.runtime.describe()}, backend '
                   f'{localizer.backend}, {localizer.head_precision} head')
        self.get_logger().info(message)
        return True, message

    def _warm_up_before_swap(self, localizer: Localizer) -> None:
        """A reload while the camera's size is known: warm the new map up before it takes
        over (the old one keeps localizing meanwhile); if that fails, the worker does it."""
        info = self._camera_info
        if info is None or self._localizer is None or not (info.width and info.height):
            return
        try:
            self._warm_up(localizer, info.width, info.height,
                          conversions.camera_info_to_K(info, self._p['image_is_rectified']))
        except ValueError as e:  # a bad CameraInfo: the images will say so
            self.get_logger().warning(f'no warm-up for the new map: {e}')

    def _on_reload(self, request: Trigger.Request, response: Trigger.Response):
        response.success, response.message = self._load_map()
        return response

    # -- input -------------------------------------------------------------------------

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_info = msg

    def _on_image(self, msg: Image) -> None:
        if not self.active:  # a callback already queued when deactivate came
            return
        self._counts.add('received')
        self._input_rate.tick()
        back_ns = self._time_guard.stamp(conversions.stamp_to_ns(msg.header.stamp))
        if back_ns is not None:
            self._reset_after_time_jump(f'image stamps jumped back by {back_ns / 1e9:.1f} s')
            # Skip this frame: clearing TF also dropped the new time's transforms that came
            # just before it (odometry, a moving mount); by the next image they are back, so
            # the node does not fall back to map -> base for want of odom.
            self._counts.add('discarded_stale')
            return
        skip = self._controls.admit()  # paused, or on_demand without a trigger
        if skip is not None:
            self._counts.add(f'skipped_{skip}')
            return
        # The epoch the frame belongs to: if time jumps back (or the map is reloaded) while
        # it is localized, it publishes nothing.
        self._slot.put((msg, self._output.epoch))

    def _work(self) -> None:
        next_allowed = 0.0
        while not self._stop.is_set():
            wait = next_allowed - time.monotonic()
            if wait > 0 and self._stop.wait(wait):
                break
            try:
                self._warm_up_for_camera()
                item = self._slot.take(timeout_s=0.2)
                if item is None:
                    continue
                if self._p['max_rate'] > 0:
                    next_allowed = time.monotonic() + 1.0 / self._p['max_rate']
                self._process(*item)
            except Exception as e:  # noqa: BLE001 - one bad frame must not stop the worker
                if not self.context.ok():  # shutting down: publishing fails, nothing to say
                    break
                self._counts.add('failed')
                self.get_logger().error(f'localization failed: {type(e).__name__}: {e}',
                                        throttle_duration_sec=5.0)

    def _frame_from(self, msg: Image, info: CameraInfo) -> Frame:
        rectified = self._p['image_is_rectified']
        if self._rectifier is None or self._rectifier.needs_update(info, rectified):
            self._rectifier = conversions.Rectifier.from_camera_info(info, rectified)
        rgb = self._rectifier.rectify(conversions.decode_image(msg))
        stamp_ns = conversions.stamp_to_ns(msg.header.stamp)
        return Frame(name=str(stamp_ns), image=rgb, K=self._rectifier.K, stamp=stamp_ns / 1e9)

    def _warm_up_for_camera(self) -> None:
        """Worker: a CameraInfo of a size not warmed up yet: warm up before its images."""
        info, localizer = self._camera_info, self._localizer
        if (info is None or localizer is None or not (info.width and info.height)
                or not self._warm_ups.needed(localizer, info.width, info.height)):
            return
        try:
            K = conversions.camera_info_to_K(info, self._p['image_is_rectified'])
        except ValueError:  # a bad CameraInfo: _process says so with the image
            return
        self._warm_up(localizer, info.width, info.height, K)

    def _warm_up(self, localizer: Localizer, width: int, height: int, K: np.ndarray) -> None:
        """Compile `localizer`'s encoder and every region's head for `width` x `height`
        images (a blank frame with intrinsics `K`), once per size."""
        if not self._warm_ups.needed(localizer, width, height):
            return
        blank = Frame(name='warm-up', image=np.zeros((height, width, 3), np.uint8), K=K)
        seconds = localizer.warm_up(blank)
        self._warm_ups.done(localizer, width, height, seconds)
        self.get_logger().info(
            f'warmed up for {width}x{height} images in {seconds:.1f} s (the encoder and '
            f'{localizer.scene_map.n_regions} region head(s) compiled before localizing)')

    def _process(self, msg: Image, epoch: int) -> None:
        info, localizer = self._camera_info, self._localizer
        log = self.get_logger()
        if info is None:
            self._counts.add('no_camera_info')
            log.warning(f"no CameraInfo received on '{self._info_sub.topic_name}' yet; "
                        'images are skipped until one arrives', throttle_duration_sec=5.0)
            return
        if localizer is None:
            self._counts.add('no_map')
            log.warning('no map loaded; images are skipped (set map_path and call '
                        '~/reload_map)', throttle_duration_sec=5.0)
            return
        try:
            frame = self._frame_from(msg, info)
        except ValueError as e:
            self._counts.add('bad_input')
            log.warning(f"cannot use image from '{self._image_sub.topic_name}': {e}",
                        throttle_duration_sec=5.0)
            return
        self._warm_up(localizer, frame.width, frame.height, frame.K)
        result = localizer.localize(frame)
        self._counts.add('processed')
        self._processed_rate.tick()
        self._latency.add(result.timings_ms)
        self._last_inliers = result.inlier_count
        self._inliers.add({'inliers': result.inlier_count})
        if not result.success or result.confidence < self._p['min_confidence']:
            self._counts.add('rejected')
            log.debug(f'no pose: {result.reason or "confidence"} ({result.inlier_count} '
                      f'inliers, confidence {result.confidence:.3f})')
            return
        if epoch != self._output.epoch:  # time jumped back, map changed or ~/reset meanwhile
            self._counts.add('discarded_stale')
            return
        if self._controls.paused:  # ~/pause came while this frame was localized
            self._counts.add('skipped_paused')
            return
        if not self.active:  # deactivated while this frame was localized
            self._counts.add('skipped_inactive')
            return
        self._output.publish(result, msg.header.stamp, msg.header.frame_id, epoch)

    def _on_clock_jump(self, jump: TimeJump) -> None:
        """The node's clock went back (simulated time reset, a bag restarted with --clock)."""
        if self._time_guard.clock_jumped(self.get_clock().now().nanoseconds):
            self._reset_after_time_jump(
                f'the clock jumped back by {-jump.delta.nanoseconds / 1e9:.1f} s')

    def _reset_after_time_jump(self, why: str) -> None:
        """Time went back: odometry and the robot's TF restart, so forget the transforms,
        map -> odom and the last pose; stamps start again from the new time. Frames that
        were being localized meanwhile publish nothing (a new epoch)."""
        self._counts.add('time_jumps')
        self._tf.clear()
        self._output.forget_pose(time_jumped=True)
        self.get_logger().warning(f'time jumped back ({why}): TF buffer, map -> odom and the '
                                  'last pose cleared; continuing from the new time')

    def _report(self) -> Report:
        c = dict(self._counts.snapshot(), dropped_stale=self._slot.dropped)
        values: Dict[str, object] = {
            'state': 'active' if self.active else 'inactive',
            'map': self._map_path or '(none)', 'map_frame': self._output.map_frame,
            'tf': self._output.tf_mode or '(none yet)',
            'mode': self._controls.mode, 'paused': self._controls.paused,
            'initialpose_gate': 'waiting for a pose near it' if self._gate.pending else 'off',
            'input_rate_hz': self._input_rate.rate(),
            'processed_rate_hz': self._processed_rate.rate(), **c,
            'warm_up_s': self._warm_ups.last_s,
            'warmed_up_for': self._warm_ups.last_size or '(not yet)'}
        for stage, (mean, worst) in sorted(self._latency.summary().items()):
            values[f'{stage}_ms_mean'] = mean
            values[f'{stage}_ms_max'] = worst
        inliers = self._inliers.summary().get('inliers')
        values['inliers_last'] = self._last_inliers
        values['inliers_mean'] = inliers[0] if inliers else 0.0
        last_good_ns = self._output.last_good_ns
        if last_good_ns is not None:
            values['last_good_pose_age_s'] = (
                self.get_clock().now().nanoseconds - last_good_ns) / 1e9
        if self._localizer is None:
            return Report(diagnostics.ERROR, 'no map loaded', values)
        if not self.active:
            return Report(diagnostics.OK, 'inactive (lifecycle): not localizing', values)
        if self._controls.paused:
            return Report(diagnostics.OK, 'paused (~/resume to localize)', values)
        if self._camera_info is None or c['received'] == 0:
            return Report(diagnostics.WARN, 'waiting for image and camera_info', values)
        if last_good_ns is None:
            return Report(diagnostics.WARN, 'no good pose yet', values)
        return Report(diagnostics.OK, 'localizing', values)


def main(args: Optional[list] = None) -> int:
    """Entry point (`ros2 run ace_ros localization_node --ros-args ...`); the exit code."""
    return node_base.run(LocalizationNode, args)


if __name__ == '__main__':
    sys.exit(main())
