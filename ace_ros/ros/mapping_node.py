"""mapping_node: collect posed keyframes from a camera, train an ACE map, save it.

A thin adapter over `ace_ros.core.online_mapping.OnlineMappingSession`: callbacks convert
messages and hand them to the session, which only matches poses and picks keyframes there;
the session's own thread encodes keyframes, and training runs in another worker thread, so
callbacks keep up with a camera (or a bag at real time) and services and diagnostics stay
responsive.

Inputs: `image` (the encodings of `ace_ros.data.messages`; with image_transport 'compressed':
CompressedImage on `image/compressed`) + `camera_info`, and camera poses from one source
(parameter pose_source): 'pose' (geometry_msgs/PoseStamped on `pose`: the pose of the camera's
optical frame), 'odom' (nav_msgs/Odometry on `odom`: its child frame must be the camera's
optical frame) or 'tf' (the camera's optical frame looked up in fixed_frame at each image
stamp; this composes any robot-to-camera extrinsics). Poses use the optical-frame convention
(REP-103: x right, y down, z forward), which is ACE's camera convention.

Keyframes: every posed image but near-duplicates (min_translation_m / min_rotation_deg: a
camera standing still); past max_keyframes they are thinned evenly (every second one dropped,
the spacing doubled), so a long drive stays covered within a bounded memory (see
`ace_ros.core.online_mapping`).

Coverage feedback, so an operator knows when to stop driving: /diagnostics carries the
session's coverage of the space (`ace_ros.ros.mapping_diagnostics`: voxels visited, view
cells seen, new ones lately, path length; the message says when coverage is saturating), and
`~/coverage` (sensor_msgs/PointCloud2, transient local, in the map's frame, at most once a
second while it changes) holds the visited voxel centres coloured by the share of viewing
directions seen from them (red: one, green: all round; `ace_ros.core.coverage`).

Mapping ends, trains and writes map_path on `~/finish` (std_srvs/Trigger), or after
idle_timeout_s without images; with finish_at_max_keyframes (off by default) also when
max_keyframes are collected. `~/save_keyframes` writes the keyframes so far as an ACE-layout
dataset (`ace-ros map FOLDER -o MAP` redoes mapping offline).

Life cycle (a managed node, `ace_ros.ros.node_base.AceNode`; `autostart`, default true,
goes through configure and activate at start-up): configure checks the parameters (a
refused value fails the transition, named), loads the encoder and opens the session and
the services; activate subscribes to the inputs and opens ~/coverage; deactivate
unsubscribes and closes ~/coverage (the keyframes so far stay, ~/finish can still train
them, and no idle timeout runs); cleanup stops training or saves the keyframes (as Ctrl-C
does) and drops the session and the encoder.
"""

from __future__ import annotations

import collections
import sys
import time
from typing import Any, Callable, Deque, Dict, Optional

from ace_ros.core.config import MappingConfig
from ace_ros.core.online_mapping import OnlineMappingConfig, OnlineMappingSession
from ace_ros.core.pose_track import PoseLookup
from ace_ros.core.runtime import make_runtime
from ace_ros.data.ace_layout import write_ace_scene
from ace_ros.data.calibration import calibration_inputs
from ace_ros.ros import conversions, diagnostics, node_base, params
from ace_ros.ros.mapping_diagnostics import mapping_report
from ace_ros.ros.mapping_training import Training
from ace_ros.ros.tf import ExtrapolationError, TfInterface, TransformError
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_srvs.srv import Trigger

#: Node parameters that are not settings-dataclass fields.
NODE_PARAMETERS: Dict[str, params.ParamSpec] = {
    **node_base.LIFECYCLE_PARAMS,
    'pose_source': params.ParamSpec(
        'pose', "where camera poses come from: 'pose' (PoseStamped on 'pose'), 'odom' "
        "(Odometry on 'odom') or 'tf' (camera_frame looked up in fixed_frame)", True),
    'fixed_frame': params.ParamSpec(
        'map', "world frame of the map: poses in another frame are refused; '' = the frame "
        "of the first pose (not allowed with pose_source 'tf')", True),
    'camera_frame': params.ParamSpec(
        '', "the camera's optical frame (x right, y down, z forward); '' = the images' "
        'header.frame_id', True),
    'image_qos': params.ParamSpec(
        'sensor_data', "QoS of the image, camera_info and pose subscriptions: 'sensor_data' "
        "(best effort: matches any publisher) or 'reliable'", True),
    'image_transport': params.ParamSpec(
        'raw', "'raw' (sensor_msgs/Image on image) or 'compressed' (CompressedImage, jpeg/png, "
        'on image/compressed, as image_transport names it)', True),
    'image_queue_depth': params.ParamSpec(
        30, 'messages the image subscription holds while the node is busy (history depth); '
        'mapping wants every frame, e.g. from a bag replayed at real time, so it is deeper '
        'than the sensor-data default (5)', True),
    'image_is_rectified': params.ParamSpec(
        False, 'images are already rectified (e.g. image_rect): use camera_info P, do not '
        'undistort', True),
    'idle_timeout_s': params.ParamSpec(
        10.0, 'start training after this many seconds (wall clock) without images, once '
        'there are 2 keyframes, so a finished bag ends mapping; 0 = never'),
    'exit_when_done': params.ParamSpec(
        True, 'shut the node down once the map is written (or mapping failed)'),
    'diagnostics_period': params.ParamSpec(1.0, 'period of /diagnostics (wall clock)', True),
}
#: Settings dataclasses whose fields are parameters too (the CLI's names and meaning).
CONFIG_CLASSES = (OnlineMappingConfig, MappingConfig)
POSE_SOURCES = ('pose', 'odom', 'tf')
_CAMERA_INFO_WAIT = 30  # images kept while waiting for the first camera_info
_COVERAGE_PERIOD_S = 1.0  # ~/coverage is rebuilt at most this often (wall clock)
#: Latched: RViz started later still gets the latest cloud.
_LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


class TfPoseSource:
    """Camera poses from TF: `camera_frame` in `fixed_frame` at the image stamp.

    'wait' while the transform may still arrive (a frame not yet known, or the stamp newer
    than the newest data); 'none' when the stamp is older than the data kept. TF interpolates
    each link between its own samples (tf2's rules), so stamp_tolerance_s does not apply.
    """

    def __init__(self, tf: TfInterface, fixed_frame: str, camera_frame: str = '') -> None:
        self._tf = tf
        self.fixed_frame = fixed_frame
        self.camera_frame = camera_frame

    def lookup(self, stamp_ns: int) -> PoseLookup:
        if not self.camera_frame:
            return PoseLookup('wait')
        try:
            return PoseLookup('ok', self._tf.lookup(self.fixed_frame, self.camera_frame,
                                                    stamp_ns))
        except ExtrapolationError as error:
            if 'future' in str(error):
                return PoseLookup('wait')
            return PoseLookup('none', reason=f'TF: {error}')
        except TransformError:
            return PoseLookup('wait')


class MappingNode(node_base.AceNode):
    """Collects keyframes and trains a map; see the module docstring."""

    NODE_NAME = 'mapping_node'

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        declare_parameters(self)
        self.p = params.read_parameters(self, NODE_PARAMETERS)
        self.session: Optional[OnlineMappingSession] = None
        self._training: Optional[Training] = None
        self._tf_source: Optional[TfPoseSource] = None
        self._stopped = False  # this session's keyframes were saved / training cancelled
        self._exit_code = 0  # of the last session cleaned up
        self.start_up()

    # -- life cycle ----------------------------------------------------------------------

    def configure_node(self) -> None:
        """Parameters (a refused one: ValueError by name), the encoder and the session."""
        self.p = params.read_parameters(self, NODE_PARAMETERS)
        online = params.read_config(self, OnlineMappingConfig)
        cfg = params.read_config(self, MappingConfig)
        self._check_parameters()
        qos_name = self.p['image_qos']
        self._qos = {'image': node_base.image_qos(qos_name, self.p['image_queue_depth']),
                     'camera_info': node_base.image_qos(qos_name),
                     'pose': node_base.image_qos(qos_name, 100)}
        self._image_input = conversions.image_subscription(self, self.p['image_transport'])
        own = self.until_cleanup
        self._tf_source = None
        if self.p['pose_source'] == 'tf':
            self._tf_source = TfPoseSource(own(TfInterface(self)), self.p['fixed_frame'],
                                           self.p['camera_frame'])
        self.session = OnlineMappingSession(
            cfg, online, self.p['fixed_frame'], self._tf_source,
            make_runtime(cfg.device, cfg.encoder, calibration_inputs), write_ace_scene)
        self._stopped = False
        self._rectifier: Optional[conversions.Rectifier] = None
        self._waiting_for_info: Deque[Image] = collections.deque()
        self._waiting_since = 0.0
        self._last_image_time: Optional[float] = None
        self._camera_frame_checked = ''
        own(self.create_service(Trigger, '~/finish', self._on_finish))
        own(self.create_service(Trigger, '~/save_keyframes', self._on_save_keyframes))
        # Wall-clock timers: under use_sim_time, /clock stops when a bag ends, and the idle
        # check and the training progress must go on.
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._diagnostics = own(diagnostics.Diagnostics(self, str(self.session.device),
                                                        period_s=0))
        session = self.session
        self._diagnostics.add_task('mapping', lambda: mapping_report(session))
        self._training = Training(self, self.session, self._diagnostics)
        own(self.create_timer(self.p['diagnostics_period'], self._diagnostics.publish,
                              clock=steady))
        own(self.create_timer(0.05, self._on_tick, clock=steady))

    def activate_node(self) -> None:
        """Subscribe to the images, camera_info and the pose source; open ~/coverage."""
        image_type, image_topic = self._image_input
        own = self.until_deactivate
        own(self.create_subscription(image_type, image_topic, self._on_image,
                                     self._qos['image']))
        own(self.create_subscription(CameraInfo, 'camera_info', self._on_camera_info,
                                     self._qos['camera_info']))
        if self.p['pose_source'] == 'pose':
            own(self.create_subscription(PoseStamped, 'pose', self._on_pose, self._qos['pose']))
        elif self.p['pose_source'] == 'odom':
            own(self.create_subscription(Odometry, 'odom', self._on_odometry,
                                         self._qos['pose']))
        self._coverage_pub = own(self.create_publisher(PointCloud2, '~/coverage', _LATCHED))
        self._coverage_cells = 0  # view cells in the cloud last published (none yet)
        own(self.create_timer(_COVERAGE_PERIOD_S, self._publish_coverage,
                              clock=Clock(clock_type=ClockType.STEADY_TIME)))
        online = self.session.online
        limit = ('then training starts' if online.finish_at_max_keyframes
                 else 'thinned evenly beyond that')
        self.get_logger().info(
            f"collecting keyframes: poses from '{self.p['pose_source']}' in frame "
            f"'{self.p['fixed_frame'] or '(first pose)'}', up to {online.max_keyframes} "
            f'keyframes ({limit}), map to {online.map_path}; call ~/finish to train')

    def deactivate_node(self) -> None:
        """The subscriptions and ~/coverage go (node_base): no more images or poses; the
        keyframes so far stay (~/finish may still train them), and the idle timeout starts
        again with the next image."""
        self._last_image_time = None
        if hasattr(self, '_waiting_for_info'):
            self._waiting_for_info.clear()

    def cleanup_node(self) -> None:
        """Stop training (or save the keyframes, as on Ctrl-C), stop the encoder thread,
        drop the session and its encoder (the services and timers go in node_base)."""
        if self.session is not None:
            self._stop_mapping('cleaned up')
            self.session.close(timeout_s=2.0)  # the keyframe encoder thread
        if self._training is not None:
            self._exit_code = self._training.exit_code
        # Nothing may keep the session (and its encoder) alive: the memory is freed next.
        self.session, self._tf_source, self._training, self._diagnostics = None, None, None, None
        self._rectifier = None

    # -- inputs --------------------------------------------------------------------------

    def _on_camera_info(self, msg: CameraInfo) -> None:
        rectified = self.p['image_is_rectified']
        if self._rectifier is not None and not self._rectifier.needs_update(msg, rectified):
            return
        try:
            self._rectifier = conversions.Rectifier.from_camera_info(msg, rectified)
        except ValueError as error:
            self.session.refuse('camera_info_invalid', f'camera_info refused: {error}', None)
            return
        while self._waiting_for_info:
            self._add_image(self._waiting_for_info.popleft())

    def _on_image(self, msg: Image) -> None:
        self._last_image_time = time.monotonic()
        if self._rectifier is None:
            # camera_info may come just after the first images (a bag, a driver starting).
            if not self._waiting_for_info:
                self._waiting_since = time.monotonic()
            self._waiting_for_info.append(msg)
            if len(self._waiting_for_info) > _CAMERA_INFO_WAIT:
                old = self._waiting_for_info.popleft()
                self.session.refuse('image_no_camera_info', 'image at '
                                    f'{conversions.stamp_to_sec(old.header.stamp):.3f} refused: '
                                    f'no camera_info has arrived (after {_CAMERA_INFO_WAIT} '
                                    "images) on '"
                                    f"{self.resolve_topic_name('camera_info')}'; K is needed")
            return
        self._add_image(msg)

    def _add_image(self, msg: Image) -> None:
        stamp_ns = conversions.stamp_to_ns(msg.header.stamp)
        try:
            rgb = self._rectifier.rectify(conversions.decode_image(msg))
        except conversions.UnsupportedImageError as error:
            self.session.refuse('image_unsupported', f'image refused: {error}')
            return
        except ValueError as error:
            self.session.refuse('image_invalid', f'image refused: {error}')
            return
        self._check_camera_frame(msg.header.frame_id)
        try:
            self.session.add_image(rgb, self._rectifier.K, stamp_ns)
        except Exception as error:  # noqa: BLE001 - e.g. out of memory: log, keep the node
            self.get_logger().error(f'image at {stamp_ns / 1e9:.3f} could not be used: '
                                    f'{type(error).__name__}: {error}',
                                    throttle_duration_sec=5.0)
            return
        self._train_at_limit()

    def _train_at_limit(self) -> bool:
        """finish_at_max_keyframes and max_keyframes collected (else the session thins): train."""
        if not (self.session.online.finish_at_max_keyframes and self.session.full):
            return False
        self._training.start(f'{self.session.keyframe_count} keyframes collected '
                             '(max_keyframes, finish_at_max_keyframes)')
        return True

    def _on_pose(self, msg: PoseStamped) -> None:
        self._add_pose(msg, conversions.pose_stamped_to_matrix, 'pose')

    def _on_odometry(self, msg: Odometry) -> None:
        camera = self.p['camera_frame'] or self._camera_frame_checked
        if msg.child_frame_id and camera and msg.child_frame_id != camera:
            self.session.refuse(
                'pose_not_camera', f"odometry refused: it is the pose of '{msg.child_frame_id}'"
                f", not of the camera's optical frame '{camera}'; use pose_source:=tf so the "
                'robot-to-camera transform is applied', 'pose')
            return
        self._add_pose(msg, conversions.odometry_to_matrix, 'odometry')

    def _add_pose(self, msg: Any, to_matrix: Callable[[Any], Any], what: str) -> None:
        """Validate a PoseStamped / Odometry message's pose and hand it to the session."""
        stamp_ns = conversions.stamp_to_ns(msg.header.stamp)
        try:
            world_from_cam = to_matrix(msg)
        except ValueError as error:
            self.session.refuse('pose_invalid', f'{what} at {stamp_ns / 1e9:.3f} refused: '
                                f'{error}', 'pose')
            return
        try:  # a pose can complete a waiting image, which is then queued for encoding
            self.session.add_pose(stamp_ns, world_from_cam, msg.header.frame_id)
        except Exception as error:  # noqa: BLE001 - e.g. out of memory: log, keep the node
            self.get_logger().error(f'{what} at {stamp_ns / 1e9:.3f} could not be used: '
                                    f'{type(error).__name__}: {error}',
                                    throttle_duration_sec=5.0)

    def _check_camera_frame(self, frame_id: str) -> None:
        """Once per camera frame name: the TF source needs it, and it should be optical."""
        camera = self.p['camera_frame'] or frame_id
        if camera == self._camera_frame_checked:
            return
        self._camera_frame_checked = camera
        if self._tf_source is not None:
            if not camera:
                self.get_logger().error(
                    "images have an empty header.frame_id and camera_frame is '': TF poses "
                    'cannot be looked up; set camera_frame')
            self._tf_source.camera_frame = camera
        if camera and 'optical' not in camera:
            self.get_logger().warning(
                f"camera frame '{camera}' does not look like an optical frame (no "
                "'_optical' in its name). Mapping needs the pose of the optical frame (x "
                'right, y down, z forward; REP-103), e.g. camera_color_optical_frame; the '
                'body-style camera_link (x forward, z up) is rotated 90 degrees from it and '
                'would give a wrong map. Ignore this if the frame is optical by another name.')

    def _publish_coverage(self) -> None:
        """~/coverage, when the keyframes have seen new view cells since the last one."""
        summary = self.session.status().coverage
        if summary is None or summary.view_cells == self._coverage_cells:
            return
        self._coverage_cells = summary.view_cells
        centres, _, colors = self.session.coverage_cloud()
        frame_id = self.session.world_frame_id or self.p['fixed_frame']
        self._coverage_pub.publish(conversions.to_point_cloud2(
            centres, colors, self.get_clock().now().to_msg(), frame_id))

    # -- mapping -------------------------------------------------------------------------

    def _on_tick(self) -> None:
        if not self.active or self.session.state != 'collecting':  # inactive: no idle end
            return
        if self._waiting_for_info and time.monotonic() - self._waiting_since > 0.5:
            self.get_logger().warning(
                f'{len(self._waiting_for_info)} image(s) received but no camera_info yet on '
                f"'{self.resolve_topic_name('camera_info')}': holding up to "
                f'{_CAMERA_INFO_WAIT} images until it arrives (K is needed)',
                throttle_duration_sec=5.0)
        if self._tf_source is not None:
            try:
                self.session.poll()
            except Exception as error:  # noqa: BLE001 - logged; the next tick tries again
                self.get_logger().error(f'TF pose lookup failed: {type(error).__name__}: '
                                        f'{error}', throttle_duration_sec=5.0)
        if self._train_at_limit():  # a pose can complete the last keyframe after its image
            return
        idle = self.p['idle_timeout_s']
        if idle > 0 and self._last_image_time is not None:
            quiet = time.monotonic() - self._last_image_time
            if quiet >= idle:
                if self.session.keyframe_count >= 2:
                    self._training.start(f'no images for {quiet:.0f} s (idle_timeout_s)')
                else:
                    self.get_logger().warning(
                        f'no images for {quiet:.0f} s but only {self.session.keyframe_count} '
                        'keyframe(s); mapping needs 2, still collecting',
                        throttle_duration_sec=30.0)

    def _on_finish(self, request: Trigger.Request, response: Trigger.Response):
        response.success, response.message = self._training.start('~/finish called')
        return response

    def _on_save_keyframes(self, request: Trigger.Request, response: Trigger.Response):
        try:
            folder = self._save_keyframes()
        except (ValueError, OSError) as error:
            response.success, response.message = False, str(error)
            return response
        response.success = True
        response.message = f'{self.session.keyframe_count} keyframes saved to {folder}'
        self.get_logger().info(response.message)
        return response

    def _save_keyframes(self) -> str:
        """Every keyframe so far (those queued for the encoder too), as an ACE-layout folder."""
        return str(write_ace_scene(self.session.next_keyframes_folder(),
                                   self.session.keyframes()))

    # -- end -----------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """The map is written (or mapping failed) and the node should exit; or shut down."""
        return super().finished or (self._training is not None and self._training.done
                                    and self.p['exit_when_done'])

    @property
    def exit_code(self) -> int:
        return self._training.exit_code if self._training is not None else self._exit_code

    def interrupt(self) -> None:
        """Ctrl-C: stop training (keyframes were saved before it began) or save them now."""
        if self.session is not None:
            self._stop_mapping('interrupted')

    def _stop_mapping(self, why: str) -> None:
        """Once per session: stop training, or save the keyframes collected so far (those
        still queued for the encoder included)."""
        if self._stopped:
            return
        self._stopped = True
        if self._training is not None and self._training.started:
            self._training.cancel()
        elif self.session.keyframe_count:
            try:
                folder = self._save_keyframes()
            except (ValueError, OSError) as error:
                self.get_logger().error(f'{why} while collecting; saving the keyframes '
                                        f'failed: {error}')
                return
            self.get_logger().warning(f'{why} while collecting: '
                                      f'{self.session.keyframe_count} keyframes saved to {folder}')

    def _check_parameters(self) -> None:
        if self.p['pose_source'] not in POSE_SOURCES:
            raise ValueError(f"parameter pose_source must be one of {list(POSE_SOURCES)}, "
                             f"got '{self.p['pose_source']}'")
        if self.p['pose_source'] == 'tf' and not self.p['fixed_frame']:
            raise ValueError("pose_source 'tf' needs fixed_frame (the world frame to look the "
                             "camera up in), got ''")
        if self.p['image_transport'] not in conversions.IMAGE_TRANSPORTS:
            raise ValueError('parameter image_transport must be one of '
                             f"{list(conversions.IMAGE_TRANSPORTS)}, got "
                             f"'{self.p['image_transport']}'")
        if self.p['image_queue_depth'] < 1:
            raise ValueError('image_queue_depth must be >= 1, got '
                             f"{self.p['image_queue_depth']}")
        if self.p['idle_timeout_s'] < 0 or self.p['diagnostics_period'] <= 0:
            raise ValueError('idle_timeout_s must be >= 0 and diagnostics_period > 0')


def declare_parameters(node: Node) -> None:
    """Declare every mapping_node parameter on `node`.

    The training settings get the preset's values as defaults.
    """
    params.declare_parameters(node, NODE_PARAMETERS)
    for cls in CONFIG_CLASSES:
        params.declare_config(node, cls)


def parameter_defaults() -> Dict[str, Any]:
    """Every parameter the node declares, with its default (presets not applied)."""
    import dataclasses
    defaults = {name: spec.default for name, spec in NODE_PARAMETERS.items()}
    for cls in CONFIG_CLASSES:
        defaults.update({f.name: f.default for f in dataclasses.fields(cls)})
    return defaults


def main(args: Optional[list] = None) -> int:
    """Entry point (`ros2 run ace_ros mapping_node --ros-args ...`); the exit code."""
    return node_base.run(MappingNode, args)


if __name__ == '__main__':
    sys.exit(main())
