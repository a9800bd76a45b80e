"""localization_node: camera images in, the robot's pose in the map frame out (REP-105).

Subscribes `image` + `camera_info` (sensor-data QoS unless `image_qos` is 'reliable'); a
worker thread localizes only the newest image (`LatestSlot`: one slot, older unprocessed
images are dropped and counted, so latency never builds up); publishes, only for poses that
pass `min_confidence`, `~/pose` and `~/pose_with_covariance` of `base_frame` and TF;
`/diagnostics`; `~/reload_map` (std_srvs/Trigger) re-reads the parameters and the map file.
At each map load, `~/map_cloud` (sensor_msgs/PointCloud2, transient local: RViz gets it when
it joins later) is the map's scene points in the map frame; empty for a map without them.

TF, as AMCL does (REP-105: map -> odom -> base_link -> ... -> camera optical frame):
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

Controls (the state and the gate are ROS-free, in `ace_ros.ros.controls`): `mode`
'continuous' or 'on_demand' (only the first image after each ~/trigger), `~/pause` /
`~/resume` (paused: nothing is localized, map -> odom is still re-broadcast), `~/reset`
(forgets the last pose, map -> odom, the initialpose and a pending trigger), and
`initialpose` (RViz's 2D Pose Estimate, in the map frame, of the frame ~/pose is of): a
gate, not a seed. Until a localized pose lies within `initialpose_gate_m` (map x-y plane)
and `initialpose_gate_deg` (heading) of it, poses publish nothing (`gated`); the first that
does lifts the gate. With odometry the prior is carried along as map -> odom.

The pose covariance follows the pose: the camera pose's (`conversions.
covariance_from_confidence`) is moved to the base with `conversions.offset_pose_covariance`.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, Optional

from ace_ros.core import device as device_lib
from ace_ros.core import geometry
from ace_ros.core.config import LocalizationConfig
from ace_ros.core.localizer import Localizer
from ace_ros.core.mapfile import load_map
from ace_ros.core.types import Frame, LocalizationResult
from ace_ros.core.weights import build_encoder
from ace_ros.ros import conversions, diagnostics, params
from ace_ros.ros.controls import Controls, PoseGate
from ace_ros.ros.diagnostics import Report
from ace_ros.ros.params import ParamSpec
from ace_ros.ros.tf import TfInterface, TransformError
from ace_ros.ros.timing import Counters, FutureDatedTransform, TimeJumpGuard
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
import numpy as np
import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import JumpThreshold, TimeJump
from rclpy.duration import Duration
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
import rclpy.logging
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, qos_profile_sensor_data, QoSProfile, ReliabilityPolicy
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
}

#: What /diagnostics counts (one `Counters`, shared by the callbacks and the worker).
COUNTERS = ('received', 'processed', 'rejected', 'failed', 'bad_input', 'no_camera_info',
            'no_map', 'tf_failed', 'published', 'time_jumps', 'discarded_stale',
            'skipped_paused', 'skipped_untriggered', 'gated')


class LatestSlot:
    """A one-item mailbox: `put` replaces what was not taken yet, `take` waits for an item.

    The image callback puts, the worker takes: the worker always gets the newest image and
    nothing queues up behind a slow localization. `dropped` counts replaced items.
    """

    def __init__(self) -> None:
        self._item: Any = None
        self._cond = threading.Condition()
        self._closed = False
        self.dropped = 0

    def put(self, item: Any) -> bool:
        """Store `item`; True when it replaced an item nobody took (a dropped frame)."""
        with self._cond:
            replaced = self._item is not None
            self.dropped += replaced
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout_s: Optional[float] = None) -> Any:
        """The newest item (removing it), or None after `timeout_s` or once closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._item is not None or self._closed, timeout_s)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class LocalizationNode(Node):
    """Thin adapter: messages -> `Localizer` -> pose, covariance and TF messages."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('localization_node', **kwargs)
        params.declare_config(self, LocalizationConfig)
        params.declare_parameters(self, NODE_PARAMS)
        self._p = params.read_parameters(self, NODE_PARAMS)
        self._localizer: Optional[Localizer] = None
        self._map_frame = ''
        self._map_path = ''
        self._encoder_cache: Dict[tuple, tuple] = {}
        self._camera_info: Optional[CameraInfo] = None
        self._rectifier: Optional[conversions.Rectifier] = None
        self._slot = LatestSlot()
        self._stop = threading.Event()
        self._counts = Counters(COUNTERS)
        self._input_rate = diagnostics.RateMeter()
        self._processed_rate = diagnostics.RateMeter()
        self._latency = diagnostics.WindowStats()
        self._inliers = diagnostics.WindowStats()
        self._last_inliers = 0
        self._last_good_ns: Optional[int] = None
        # map -> odom: its value, its stamps and the epoch (a time jump or a map reload
        # starts a new one); the lock makes a map reload and a map -> odom update exclusive.
        self._map_odom = FutureDatedTransform()
        self._map_lock = threading.Lock()
        threshold = self._p['time_jump_threshold']
        if threshold <= 0:
            raise ValueError(f'parameter time_jump_threshold must be > 0, got {threshold}')
        self._time_guard = TimeJumpGuard(int(threshold * 1e9))
        self._foreign_parents: Dict[str, str] = {}  # frames never to publish: their parent
        self._notes: Dict[str, str] = {}  # what was last logged about TF, per topic
        self._tf_mode = ''
        # Controls (ace_ros.ros.controls): bad values stop the node at start, by name.
        self._controls = Controls(self._p['mode'])
        self._gate = PoseGate(self._p['initialpose_gate_m'], self._p['initialpose_gate_deg'])
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._tf = TfInterface(self, self._p['tf_cache_duration'])
        self._pose_pub = self.create_publisher(PoseStamped, '~/pose', 10)
        self._cov_pub = self.create_publisher(PoseWithCovarianceStamped,
                                              '~/pose_with_covariance', 10)
        # Latched: published once per map load, and RViz may start long after.
        self._cloud_pub = self.create_publisher(PointCloud2, '~/map_cloud', QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self._load_map()
        self._diagnostics = diagnostics.Diagnostics(self, period_s=self._p['diagnostics_period'])
        self._diagnostics.add_task('localization', self._report)
        if self._p['tf_broadcast_rate'] > 0:
            self.create_timer(1.0 / self._p['tf_broadcast_rate'], self._rebroadcast_map_odom)
        self._jump_handle = self.get_clock().create_jump_callback(
            JumpThreshold(min_forward=None, min_backward=Duration(seconds=-threshold),
                          on_clock_change=False), post_callback=self._on_clock_jump)
        self.create_service(Trigger, '~/reload_map', self._on_reload,
                            callback_group=MutuallyExclusiveCallbackGroup())
        for name, handler in (('trigger', self._on_trigger), ('pause', self._on_pause),
                              ('resume', self._on_resume), ('reset', self._on_reset)):
            self.create_service(Trigger, f'~/{name}', handler)
        # RViz's "2D Pose Estimate" publishes here (reliable, like AMCL's subscription).
        self._initialpose_sub = self.create_subscription(
            PoseWithCovarianceStamped, 'initialpose', self._on_initialpose, 10)
        qos = self._image_qos(self._p['image_qos'])
        image_type, image_topic = conversions.image_subscription(self,
                                                                 self._p['image_transport'])
        self._image_sub = self.create_subscription(image_type, image_topic, self._on_image, qos)
        self._info_sub = self.create_subscription(CameraInfo, 'camera_info',
                                                  self._on_camera_info, qos)
        self._worker = threading.Thread(target=self._work, name='localizer', daemon=True)
        self._worker.start()

    # -- map ---------------------------------------------------------------------------

    def _load_map(self) -> tuple:
        """(success, message); on failure the previous map (if any) stays in use."""
        try:
            self._p = params.read_parameters(self, NODE_PARAMS)
            cfg = params.read_config(self, LocalizationConfig)
            path = self._p['map_path']
            if not path:
                raise ValueError('the map_path parameter is empty; set it to a map file '
                                 '(.ace) made by mapping_node or `ace-ros map`')
            scene_map = load_map(path)
            device = device_lib.resolve_device(cfg.device)
            key = (cfg.encoder, str(device))
            if key not in self._encoder_cache:
                self._encoder_cache = {key: build_encoder(cfg.encoder, device)[:2]}
            encoder, encoder_sha256 = self._encoder_cache[key]
            localizer = Localizer(scene_map, cfg, encoder=encoder, encoder_sha256=encoder_sha256)
        except Exception as e:  # noqa: BLE001 - any bad map or setting must leave us running
            what = 'keeping the previous map' if self._localizer else \
                'not localizing until ~/reload_map succeeds'
            message = f'cannot load map: {e}'
            self.get_logger().error(f'{message} ({what})')
            return False, message
        map_frame = self._p['map_frame'] or scene_map.world_frame_id
        with self._map_lock:
            self._localizer, self._map_frame, self._map_path = localizer, map_frame, path
            self._map_odom.tolerance_ns = int(self._p['transform_tolerance'] * 1e9)
            self._map_odom.restart(time_jumped=False)  # frames of the old map publish nothing
            self._foreign_parents, self._notes = {}, {}  # frames may have changed
        # Empty for a map without a cloud, so that a reload does not leave the old one shown.
        cloud = scene_map.cloud
        self._cloud_pub.publish(conversions.to_point_cloud2(
            cloud.points if cloud else np.zeros((0, 3)),
            cloud.colors if cloud else np.zeros((0, 3), np.uint8),
            self.get_clock().now().to_msg(), map_frame))
        message = (f"loaded map {path} (frame '{map_frame}', {len(scene_map.frame_names)} "
                   f'mapping frames) on {device_lib.describe(localizer.device)}, backend '
                   f'{localizer.backend}, {localizer.head_precision} head')
        self.get_logger().info(message)
        return True, message

    def _on_reload(self, request: Trigger.Request, response: Trigger.Response):
        response.success, response.message = self._load_map()
        return response

    # -- controls ----------------------------------------------------------------------

    def _on_set_parameters(self, changed: list) -> SetParametersResult:
        for p in changed:
            if p.name == 'mode':
                try:
                    self._controls.mode = p.value if isinstance(p.value, str) else repr(p.value)
                except ValueError as e:
                    return SetParametersResult(successful=False, reason=str(e))
                self.get_logger().info(f"mode is now '{p.value}'")
        return SetParametersResult(successful=True)

    def _on_trigger(self, request: Trigger.Request, response: Trigger.Response):
        response.success, response.message = self._controls.trigger()
        return response

    def _on_pause(self, request: Trigger.Request, response: Trigger.Response):
        response.success, response.message = True, self._controls.pause()
        self._slot.take(timeout_s=0.0)  # an image waiting for the worker is not localized
        self.get_logger().info(response.message)
        return response

    def _on_resume(self, request: Trigger.Request, response: Trigger.Response):
        response.success, response.message = True, self._controls.resume()
        self.get_logger().info(response.message)
        return response

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response):
        """Forget the last pose, map -> odom (no longer re-broadcast), the initialpose and a
        pending trigger; frames being localized publish nothing (a new epoch)."""
        self._controls.reset()
        self._gate.clear()
        with self._map_lock:
            self._map_odom.restart(time_jumped=False)
        self._last_good_ns = None
        response.success = True
        response.message = 'reset: last pose, map -> odom and initialpose cleared'
        self.get_logger().info(response.message)
        return response

    def _on_initialpose(self, msg: PoseWithCovarianceStamped) -> None:
        frame = msg.header.frame_id
        if frame not in ('', self._map_frame):
            self.get_logger().warning(f"initialpose ignored: it is in frame '{frame}', "
                                      f"expected the map frame '{self._map_frame}'")
            return
        try:
            self._gate.set_prior(conversions.pose_to_matrix(msg.pose.pose),
                                 conversions.stamp_to_ns(msg.header.stamp))
        except ValueError as e:
            self.get_logger().warning(f'initialpose ignored: {e}')
            return
        self.get_logger().info(
            f'initialpose received: poses are accepted only within '
            f'{self._gate.gate_m:g} m and {self._gate.gate_deg:g} deg of it, until one is')

    def _passes_gate(self, map_from_body: np.ndarray, odom: str, body: str,
                     stamp_ns: int) -> bool:
        """True when no initialpose is pending or the pose is near it (which lifts it)."""
        if not self._gate.pending:
            return True
        odom_from_body = None
        if odom and self._tf.connected(odom, body):
            try:
                if self._gate.needs_anchor:  # the prior becomes map -> odom: it follows odom
                    self._gate.anchor(self._lookup(odom, body, self._gate.prior_stamp_ns))
                odom_from_body = self._lookup(odom, body, stamp_ns)
            except TransformError as e:
                self.get_logger().warning(f'initialpose not moved with odometry: {e}',
                                          throttle_duration_sec=5.0)
                if self._gate.needs_anchor:
                    self._gate.anchor(None)
        elif self._gate.needs_anchor:
            self._gate.anchor(None)
        result = self._gate.check(map_from_body, odom_from_body)
        if not result.accepted:
            self._counts.add('gated')
            self.get_logger().warning(
                f'pose rejected: {result.distance_m:.2f} m and {result.heading_deg:.0f} deg '
                f'from the initialpose (gate {self._gate.gate_m:g} m, '
                f'{self._gate.gate_deg:g} deg)', throttle_duration_sec=2.0)
            return False
        self.get_logger().info(f'pose accepted {result.distance_m:.2f} m and '
                               f'{result.heading_deg:.0f} deg from the initialpose: gate '
                               'lifted')
        return True

    # -- input -------------------------------------------------------------------------

    @staticmethod
    def _image_qos(name: str) -> QoSProfile:
        if name == 'sensor_data':
            return QoSProfile(depth=1, reliability=qos_profile_sensor_data.reliability,
                              durability=qos_profile_sensor_data.durability)
        if name == 'reliable':
            return QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        raise ValueError(f"parameter image_qos must be 'sensor_data' or 'reliable', got "
                         f"'{name}'")

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_info = msg

    def _on_image(self, msg: Image) -> None:
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
        self._slot.put((msg, self._map_odom.epoch))

    def _work(self) -> None:
        next_allowed = 0.0
        while not self._stop.is_set():
            wait = next_allowed - time.monotonic()
            if wait > 0 and self._stop.wait(wait):
                break
            item = self._slot.take(timeout_s=0.2)
            if item is None:
                continue
            if self._p['max_rate'] > 0:
                next_allowed = time.monotonic() + 1.0 / self._p['max_rate']
            try:
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
        if epoch != self._map_odom.epoch:  # time jumped back, map changed or ~/reset meanwhile
            self._counts.add('discarded_stale')
            return
        if self._controls.paused:  # ~/pause came while this frame was localized
            self._counts.add('skipped_paused')
            return
        self._publish(result, msg, epoch)

    # -- output ------------------------------------------------------------------------

    def _publish(self, result: LocalizationResult, msg: Image, epoch: int) -> None:
        camera = self._p['camera_frame'] or msg.header.frame_id
        if not camera:
            raise ValueError('the image has an empty header.frame_id and the camera_frame '
                             'parameter is empty: cannot name the localized frame')
        stamp, stamp_ns = msg.header.stamp, conversions.stamp_to_ns(msg.header.stamp)
        map_frame = self._map_frame
        base, odom = self._p['base_frame'], self._p['odom_frame']
        legacy = not base and not odom  # the explicit map -> camera mode: no lookups
        body, body_from_cam = self._body(base or camera, camera, stamp_ns)
        if body_from_cam is None:
            return
        cam_from_body = geometry.invert_pose(body_from_cam)
        map_from_body = result.world_from_cam @ cam_from_body
        if not self._passes_gate(map_from_body, odom, body, stamp_ns):
            return
        covariance = conversions.offset_pose_covariance(
            conversions.covariance_from_confidence(
                result.confidence, self._p['position_sigma'], self._p['rotation_sigma']),
            result.world_from_cam, cam_from_body)
        self._pose_pub.publish(conversions.to_pose_stamped(map_from_body, stamp, map_frame))
        self._cov_pub.publish(conversions.to_pose_with_covariance(
            map_from_body, covariance, stamp, map_frame))
        self._counts.add('published')
        self._last_good_ns = stamp_ns
        if not self._p['publish_tf']:
            return
        if odom and self._tf.connected(odom, body):
            self._update_map_odom(map_from_body, odom, body, stamp_ns, epoch)
            return
        if not legacy:
            why = (f"odom_frame '{odom}' is not linked to '{body}' in TF" if odom
                   else "odom_frame is ''")
            self._note('tf', f'no-odom:{body}', f'{why}: publishing map -> {body} at each '
                       'image stamp instead of map -> odom (REP-105 fallback: a hand-held '
                       'camera or no odometry)', warn=bool(odom))
        self._map_odom.forget()  # no map -> odom to re-broadcast meanwhile
        if self._may_parent(body):
            self._tf_mode = f'{map_frame} -> {body}'
            self._tf.send([conversions.to_transform_stamped(map_from_body, stamp, map_frame,
                                                            body)])

    def _body(self, base: str, camera: str, stamp_ns: int) -> tuple:
        """(the frame whose pose is published, its `body_from_cam` or None: skip the frame)."""
        if base == camera:
            return camera, np.eye(4)
        if not self._tf.connected(base, camera):
            self._note('body', f'no-mount:{base}', f"base_frame '{base}' is not linked to "
                       f"the camera frame '{camera}' in TF (no camera mount published): "
                       'the pose and TF are of the camera frame itself. For a camera with no '
                       "TF tree, set base_frame:='' and odom_frame:='' to say so", warn=True)
            return camera, np.eye(4)
        self._note('body', f'mount:{base}', f"~/pose is the pose of '{base}' (the camera "
                   f"mount '{base}' -> '{camera}' from TF)")
        try:
            return base, self._lookup(base, camera, stamp_ns)
        except TransformError as e:
            self._counts.add('tf_failed')
            self.get_logger().warning(f'no pose published: no {base} -> {camera} at the '
                                      f'image stamp: {e}', throttle_duration_sec=5.0)
            return base, None

    def _update_map_odom(self, map_from_body: np.ndarray, odom: str, body: str,
                         stamp_ns: int, epoch: int) -> None:
        try:
            odom_from_body = self._lookup(odom, body, stamp_ns)
        except TransformError as e:
            self._counts.add('tf_failed')
            self.get_logger().warning(f'pose published but no map -> {odom} update: {e}',
                                      throttle_duration_sec=5.0)
            return
        self._note('tf', f'odom:{odom}', f'publishing {self._map_frame} -> {odom} ({odom} -> '
                   f'{body} from TF at each image stamp)')
        if not self._may_parent(odom):
            return
        map_from_odom = map_from_body @ geometry.invert_pose(odom_from_body)
        with self._map_lock:
            when = self._map_odom.update(map_from_odom, stamp_ns, epoch)
            if when is None:  # the map was reloaded or time jumped back meanwhile
                self._counts.add('discarded_stale')
                return
            self._tf_mode = f'{self._map_frame} -> {odom}'
            self._send_map_odom(map_from_odom, when)

    def _may_parent(self, child: str) -> bool:
        """True when map -> `child` may be published: `child` has no parent in TF but the
        map frame (this node's own earlier transform). Once another parent was seen, never
        (until ~/reload_map): a frame must not get two parents."""
        parent = self._tf.parent(child)
        if parent and parent != self._map_frame:
            self._foreign_parents.setdefault(child, parent)
        if child not in self._foreign_parents:
            return True
        self._tf_mode = f'none ({child} has the parent {self._foreign_parents[child]})'
        self._note('parent', child, f"'{child}' already has the parent "
                   f"'{self._foreign_parents[child]}' in TF: publishing no TF (a frame gets "
                   'one parent), only ~/pose and ~/pose_with_covariance', warn=True)
        return False

    def _note(self, topic: str, key: str, text: str, warn: bool = False) -> None:
        """Log `text` once when what happens about `topic` changes to `key`."""
        if self._notes.get(topic) == key:
            return
        self._notes[topic] = key
        if warn:  # (rclpy wants one severity per call site)
            self.get_logger().warning(text)
        else:
            self.get_logger().info(text)

    def _lookup(self, target: str, source: str, stamp_ns: int) -> np.ndarray:
        return self._tf.lookup(target, source, stamp_ns, self._p['tf_timeout'])

    def _send_map_odom(self, map_from_odom: np.ndarray, when_ns: int) -> None:
        """Send map -> odom at `when_ns`, a stamp from `self._map_odom` (lock held, so
        that stamps go out in the order they were given)."""
        self._tf.send([conversions.to_transform_stamped(
            map_from_odom, conversions.ns_to_stamp(when_ns), self._map_frame,
            self._p['odom_frame'])])

    def _rebroadcast_map_odom(self) -> None:
        if not (self._p['publish_tf'] and self._p['odom_frame']):
            return
        now_ns = self.get_clock().now().nanoseconds
        with self._map_lock:
            due = self._map_odom.rebroadcast(now_ns)
            if due is not None:
                self._send_map_odom(*due)

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
        with self._map_lock:
            self._map_odom.restart(time_jumped=True)
        self._last_good_ns = None
        self.get_logger().warning(f'time jumped back ({why}): TF buffer, map -> odom and the '
                                  'last pose cleared; continuing from the new time')

    def _report(self) -> Report:
        c = dict(self._counts.snapshot(), dropped_stale=self._slot.dropped)
        values: Dict[str, object] = {
            'map': self._map_path or '(none)', 'map_frame': self._map_frame,
            'tf': self._tf_mode or '(none yet)',
            'mode': self._controls.mode, 'paused': self._controls.paused,
            'initialpose_gate': 'waiting for a pose near it' if self._gate.pending else 'off',
            'input_rate_hz': self._input_rate.rate(),
            'processed_rate_hz': self._processed_rate.rate(), **c}
        for stage, (mean, worst) in sorted(self._latency.summary().items()):
            values[f'{stage}_ms_mean'] = mean
            values[f'{stage}_ms_max'] = worst
        inliers = self._inliers.summary().get('inliers')
        values['inliers_last'] = self._last_inliers
        values['inliers_mean'] = inliers[0] if inliers else 0.0
        if self._last_good_ns is not None:
            values['last_good_pose_age_s'] = (
                self.get_clock().now().nanoseconds - self._last_good_ns) / 1e9
        if self._localizer is None:
            return Report(diagnostics.ERROR, 'no map loaded', values)
        if self._controls.paused:
            return Report(diagnostics.OK, 'paused (~/resume to localize)', values)
        if self._camera_info is None or c['received'] == 0:
            return Report(diagnostics.WARN, 'waiting for image and camera_info', values)
        if self._last_good_ns is None:
            return Report(diagnostics.WARN, 'no good pose yet', values)
        return Report(diagnostics.OK, 'localizing', values)

    def shutdown(self) -> None:
        """Stop the worker thread (it finishes the frame it is localizing)."""
        self._stop.set()
        self._slot.close()
        self._worker.join(timeout=10.0)


def main(args: Optional[list] = None) -> None:
    """Entry point (`ros2 run ace_ros localization_node --ros-args ...`)."""
    rclpy.init(args=args)
    node = None
    try:
        node = LocalizationNode()
        executor = MultiThreadedExecutor(num_threads=2)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (ValueError, ParameterException) as e:
        # A bad parameter at start: say which, without a traceback.
        rclpy.logging.get_logger('localization_node').fatal(f'invalid parameters: {e}')
        raise SystemExit(2)
    except Exception:
        # A signal can shut the context down while the executor builds its wait set
        # (RCLError 'context is not valid'): that is a normal shutdown, anything else is not.
        if rclpy.ok():
            raise
    finally:
        if node is not None:
            node.shutdown()
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
