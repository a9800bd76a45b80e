"""The localization node's output side: a localized camera pose -> ~/pose, covariance, TF.

`PoseOutput.publish` turns the engine's map -> camera into the pose of the body frame
(`base_frame`, or the camera in the fallbacks; the mount from TF), checks it against the
initialpose gate (`ace_ros.ros.controls.PoseGate`), publishes ~/pose and
~/pose_with_covariance, and TF: map -> odom as AMCL does (REP-105; odom -> body from TF at
the image stamp), or map -> body without odometry, or nothing when the frame already has
another parent. map -> odom is a `FutureDatedTransform` (its value, stamps and epoch);
`rebroadcast` re-sends it from a timer. The node's module docstring tells the fallbacks and
what each logs.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, Optional, Tuple

from ace_ros.core import geometry
from ace_ros.core.types import LocalizationResult
from ace_ros.ros import conversions
from ace_ros.ros.controls import PoseGate
from ace_ros.ros.tf import TfInterface, TransformError
from ace_ros.ros.timing import Counters, FutureDatedTransform
from builtin_interfaces.msg import Time as TimeMsg
import numpy as np
from rclpy.node import Node
from rclpy.publisher import Publisher


class PoseOutput:
    """From a localization result to the pose topics and TF, for one node.

    Args:
        node: the node (its logger and clock).
        tf: the node's TF interface (lookups and /tf).
        counts: the node's counters ('published', 'tf_failed', 'discarded_stale', 'gated').
        gate: the initialpose gate poses must pass.
        pose_pub: ~/pose (PoseStamped).
        cov_pub: ~/pose_with_covariance (PoseWithCovarianceStamped).
        params: the node's current parameter values (re-read at each map load).
    """

    def __init__(self, node: Node, tf: TfInterface, counts: Counters, gate: PoseGate,
                 pose_pub: Publisher, cov_pub: Publisher,
                 params: Callable[[], Dict[str, Any]]) -> None:
        self._node, self._tf, self._counts, self._gate = node, tf, counts, gate
        self._pose_pub, self._cov_pub = pose_pub, cov_pub
        self._params = params
        self.map_frame = ''
        #: Stamp (ns) of the last published pose; None before one or after a reset.
        self.last_good_ns: Optional[int] = None
        #: What TF is published now, for /diagnostics ('' before anything).
        self.tf_mode = ''
        # map -> odom: its value, its stamps and the epoch (a time jump or a map reload
        # starts a new one); the lock makes a map reload and a map -> odom update exclusive.
        self._map_odom = FutureDatedTransform()
        self._map_lock = threading.Lock()
        self._foreign_parents: Dict[str, str] = {}  # frames never to publish: their parent
        self._notes: Dict[str, str] = {}  # what was last logged about TF, per topic

    @property
    def epoch(self) -> int:
        """The current epoch: a frame that arrived in an older one publishes nothing."""
        return self._map_odom.epoch

    def new_map(self, map_frame: str, tolerance_s: float) -> None:
        """A map was loaded: its frame; frames of the old map publish nothing."""
        with self._map_lock:
            self.map_frame = map_frame
            self._map_odom.tolerance_ns = int(tolerance_s * 1e9)
            self._map_odom.restart(time_jumped=False)
            self._foreign_parents, self._notes = {}, {}  # frames may have changed

    def forget_pose(self, time_jumped: bool) -> None:
        """Forget map -> odom (no longer re-broadcast) and the last pose; frames being
        localized publish nothing (a new epoch). With `time_jumped`, stamps start again."""
        with self._map_lock:
            self._map_odom.restart(time_jumped=time_jumped)
        self.last_good_ns = None

    def publish(self, result: LocalizationResult, stamp: TimeMsg, camera_frame: str,
                epoch: int) -> None:
        """Publish `result` (map -> camera) of an image stamped `stamp` (the module doc)."""
        p = self._params()
        camera = p['camera_frame'] or camera_frame
        if not camera:
            raise ValueError('the image has an empty header.frame_id and the camera_frame '
                             'parameter is empty: cannot name the localized frame')
        stamp_ns = conversions.stamp_to_ns(stamp)
        map_frame = self.map_frame
        base, odom = p['base_frame'], p['odom_frame']
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
                result.confidence, p['position_sigma'], p['rotation_sigma']),
            result.world_from_cam, cam_from_body)
        self._pose_pub.publish(conversions.to_pose_stamped(map_from_body, stamp, map_frame))
        self._cov_pub.publish(conversions.to_pose_with_covariance(
            map_from_body, covariance, stamp, map_frame))
        self._counts.add('published')
        self.last_good_ns = stamp_ns
        if not p['publish_tf']:
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
            self.tf_mode = f'{map_frame} -> {body}'
            self._tf.send([conversions.to_transform_stamped(map_from_body, stamp, map_frame,
                                                            body)])

    def rebroadcast(self) -> None:
        """Re-send map -> odom at the clock's now (a timer calls this)."""
        p = self._params()
        if not (p['publish_tf'] and p['odom_frame']):
            return
        now_ns = self._node.get_clock().now().nanoseconds
        with self._map_lock:
            due = self._map_odom.rebroadcast(now_ns)
            if due is not None:
                self._send_map_odom(*due)

    def _body(self, base: str, camera: str,
              stamp_ns: int) -> Tuple[str, Optional[np.ndarray]]:
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
            self._node.get_logger().warning(f'no pose published: no {base} -> {camera} at '
                                            f'the image stamp: {e}', throttle_duration_sec=5.0)
            return base, None

    def _passes_gate(self, map_from_body: np.ndarray, odom: str, body: str,
                     stamp_ns: int) -> bool:
        """True when no initialpose is pending or the pose is near it (which lifts it)."""
        gate, log = self._gate, self._node.get_logger()
        if not gate.pending:
            return True
        odom_from_body = None
        if odom and self._tf.connected(odom, body):
            try:
                if gate.needs_anchor:  # the prior becomes map -> odom: it follows odom
                    gate.anchor(self._lookup(odom, body, gate.prior_stamp_ns))
                odom_from_body = self._lookup(odom, body, stamp_ns)
            except TransformError as e:
                log.warning(f'initialpose not moved with odometry: {e}',
                            throttle_duration_sec=5.0)
                if gate.needs_anchor:
                    gate.anchor(None)
        elif gate.needs_anchor:
            gate.anchor(None)
        result = gate.check(map_from_body, odom_from_body)
        if not result.accepted:
            self._counts.add('gated')
            log.warning(f'pose rejected: {result.distance_m:.2f} m and '
                        f'{result.heading_deg:.0f} deg from the initialpose (gate '
                        f'{gate.gate_m:g} m, {gate.gate_deg:g} deg)', throttle_duration_sec=2.0)
            return False
        log.info(f'pose accepted {result.distance_m:.2f} m and {result.heading_deg:.0f} deg '
                 'from the initialpose: gate lifted')
        return True

    def _update_map_odom(self, map_from_body: np.ndarray, odom: str, body: str,
                         stamp_ns: int, epoch: int) -> None:
        try:
            odom_from_body = self._lookup(odom, body, stamp_ns)
        except TransformError as e:
            self._counts.add('tf_failed')
            self._node.get_logger().warning(f'pose published but no map -> {odom} update: '
                                            f'{e}', throttle_duration_sec=5.0)
            return
        self._note('tf', f'odom:{odom}', f'publishing {self.map_frame} -> {odom} ({odom} -> '
                   f'{body} from TF at each image stamp)')
        if not self._may_parent(odom):
            return
        map_from_odom = map_from_body @ geometry.invert_pose(odom_from_body)
        with self._map_lock:
            when = self._map_odom.update(map_from_odom, stamp_ns, epoch)
            if when is None:  # the map was reloaded or time jumped back meanwhile
                self._counts.add('discarded_stale')
                return
            self.tf_mode = f'{self.map_frame} -> {odom}'
            self._send_map_odom(map_from_odom, when)

    def _may_parent(self, child: str) -> bool:
        """True when map -> `child` may be published: `child` has no parent in TF but the
        map frame (this node's own earlier transform). Once another parent was seen, never
        (until ~/reload_map): a frame must not get two parents."""
        parent = self._tf.parent(child)
        if parent and parent != self.map_frame:
            self._foreign_parents.setdefault(child, parent)
        if child not in self._foreign_parents:
            return True
        self.tf_mode = f'none ({child} has the parent {self._foreign_parents[child]})'
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
            self._node.get_logger().warning(text)
        else:
            self._node.get_logger().info(text)

    def _lookup(self, target: str, source: str, stamp_ns: int) -> np.ndarray:
        return self._tf.lookup(target, source, stamp_ns, self._params()['tf_timeout'])

    def _send_map_odom(self, map_from_odom: np.ndarray, when_ns: int) -> None:
        """Send map -> odom at `when_ns`, a stamp from `self._map_odom` (lock held, so
        that stamps go out in the order they were given)."""
        self._tf.send([conversions.to_transform_stamped(
            map_from_odom, conversions.ns_to_stamp(when_ns), self.map_frame,
            self._params()['odom_frame'])])
