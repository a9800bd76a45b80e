"""One TF interface for both nodes: tf2_ros where it exists, else a small /tf adapter.

`TfInterface(node)` gives `lookup()` (a chain of transforms at a stamp, as a 4x4 matrix),
`send()` (dynamic, /tf) and `send_static()` (/tf_static, transient local). With tf2_ros
importable (any ROS 2 distribution) it wraps tf2_ros.Buffer, TransformListener,
TransformBroadcaster and StaticTransformBroadcaster. Without it (the PyPI wheels have no
tf2_ros), it subscribes and publishes tf2_msgs/TFMessage itself with tf2_ros's QoS, and
`TransformBuffer` answers lookups with tf2's semantics: a tree of frames, one parent each,
linear/slerp interpolation between stored samples, a cache duration, static transforms valid
at all times, stamp 0 meaning "latest common time", and errors for unknown frames,
disconnected trees and extrapolation.

All errors are `TransformError` subclasses, whichever backend is used.
"""

from __future__ import annotations

import bisect
import threading
import time
from typing import Dict, Iterable, List, Optional, Union

from ace_ros.core import geometry
from ace_ros.ros import conversions
from builtin_interfaces.msg import Time as TimeMsg
from geometry_msgs.msg import TransformStamped
import numpy as np
import numpy.typing as npt
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
import rclpy.duration
import rclpy.time

try:  # tf2_ros exists on every ROS 2 distribution, not in the PyPI wheels
    import tf2_ros
except ImportError:  # pragma: no cover - depends on the environment
    tf2_ros = None

FloatArray = npt.NDArray[np.float64]
Stamp = Union[None, int, TimeMsg, rclpy.time.Time]

#: tf2_ros's QoS: /tf reliable depth 100, /tf_static reliable transient-local.
TF_QOS = QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST,
                    reliability=ReliabilityPolicy.RELIABLE,
                    durability=DurabilityPolicy.VOLATILE)
TF_STATIC_QOS = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                           reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)
_STATIC_LISTENER_QOS = QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST,
                                  reliability=ReliabilityPolicy.RELIABLE,
                                  durability=DurabilityPolicy.TRANSIENT_LOCAL)


class TransformError(Exception):
    """A transform could not be looked up."""


class FrameNotFoundError(TransformError):
    """A frame is not known to the buffer."""


class ConnectivityError(TransformError):
    """Both frames are known but not in the same tree."""


class ExtrapolationError(TransformError):
    """The stamp is outside the stored samples of a link of the chain."""


def to_ns(stamp: Stamp) -> int:
    """None / int ns / builtin_interfaces Time / rclpy Time -> int ns (0 = latest)."""
    if stamp is None:
        return 0
    if isinstance(stamp, rclpy.time.Time):
        return int(stamp.nanoseconds)
    if isinstance(stamp, TimeMsg):
        return conversions.stamp_to_ns(stamp)
    return int(stamp)


class _Link:
    """The samples of one child frame: parent, static flag, (stamp ns, 4x4) sorted by stamp."""

    def __init__(self, parent: str, static: bool) -> None:
        self.parent = parent
        self.static = static
        self.stamps: List[int] = []
        self.poses: List[FloatArray] = []


class TransformBuffer:
    """tf2-like transform storage and lookup, ROS-free (stamps are int nanoseconds).

    Thread-safe: subscription callbacks insert while other threads look up.
    """

    def __init__(self, cache_duration_s: float = 10.0) -> None:
        if cache_duration_s <= 0:
            raise ValueError(f'cache_duration_s must be > 0, got {cache_duration_s}')
        self.cache_ns = int(cache_duration_s * 1e9)
        self._links: Dict[str, _Link] = {}
        self._cond = threading.Condition()

    def clear(self) -> None:
        """Forget dynamic transforms (e.g. after simulated time jumped back); keep static."""
        with self._cond:
            self._links = {k: v for k, v in self._links.items() if v.static}

    def frames(self) -> List[str]:
        """All known frame names, sorted."""
        with self._cond:
            names = set(self._links) | {link.parent for link in self._links.values()}
        return sorted(names)

    def set_transform(self, parent: str, child: str, stamp_ns: int,
                      parent_from_child: FloatArray, static: bool = False) -> None:
        """Store one sample of `parent_from_child` (4, 4).

        A frame has one parent: a sample naming another parent replaces the frame's history
        (tf2 does the same). A dynamic sample older than the newest by more than the cache
        duration means time jumped back (a bag restarted): the frame's history restarts.
        """
        if not parent or not child or parent == child:
            raise ValueError(f"a transform needs two different frames, got '{parent}' -> "
                             f"'{child}'")
        pose = np.asarray(parent_from_child, dtype=np.float64)
        geometry.check_shape(pose, (4, 4), 'parent_from_child')
        with self._cond:
            link = self._links.get(child)
            if link is None or link.parent != parent or link.static != static:
                link = self._links[child] = _Link(parent, static)
            if static:
                link.stamps, link.poses = [stamp_ns], [pose]
            else:
                if link.stamps and stamp_ns < link.stamps[-1] - self.cache_ns:
                    link.stamps, link.poses = [], []
                index = bisect.bisect_left(link.stamps, stamp_ns)
                if index < len(link.stamps) and link.stamps[index] == stamp_ns:
                    link.poses[index] = pose
                else:
                    link.stamps.insert(index, stamp_ns)
                    link.poses.insert(index, pose)
                cut = bisect.bisect_left(link.stamps, link.stamps[-1] - self.cache_ns)
                if cut:
                    del link.stamps[:cut], link.poses[:cut]
            self._cond.notify_all()

    def set_transform_msg(self, msg: TransformStamped, static: bool = False) -> None:
        """Store a TransformStamped (invalid quaternions raise ValueError)."""
        self.set_transform(msg.header.frame_id, msg.child_frame_id,
                           conversions.stamp_to_ns(msg.header.stamp),
                           conversions.transform_to_matrix(msg.transform), static)

    def lookup(self, target: str, source: str, stamp_ns: int = 0,
               timeout_s: float = 0.0) -> FloatArray:
        """(4, 4) `target_from_source` at `stamp_ns` (0: the latest time all links share).

        Waits up to `timeout_s` for data to arrive (inserted by another thread).

        Raises:
            FrameNotFoundError, ConnectivityError, ExtrapolationError.
        """
        deadline = time.monotonic() + max(timeout_s, 0.0)
        with self._cond:
            while True:
                try:
                    return self._lookup(target, source, stamp_ns)
                except TransformError:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise
                    self._cond.wait(remaining)

    def can_transform(self, target: str, source: str, stamp_ns: int = 0) -> bool:
        try:
            self.lookup(target, source, stamp_ns)
        except TransformError:
            return False
        return True

    # -- internals (called with the lock held) --

    def _chain(self, frame: str) -> List[str]:
        """[frame, parent, grandparent, ..., root]."""
        chain = [frame]
        while chain[-1] in self._links:
            parent = self._links[chain[-1]].parent
            if parent in chain or len(chain) > 1000:
                raise ConnectivityError(f"TF has a loop through '{parent}': {chain}")
            chain.append(parent)
        return chain

    def _known(self, frame: str) -> bool:
        return frame in self._links or any(
            link.parent == frame for link in self._links.values())

    def _lookup(self, target: str, source: str, stamp_ns: int) -> FloatArray:
        for frame in (target, source):
            if not self._known(frame):
                known = sorted(set(self._links) | {v.parent for v in self._links.values()})
                raise FrameNotFoundError(f"frame '{frame}' does not exist in TF (looking up "
                                         f"'{target}' <- '{source}'); known frames: {known}")
        if target == source:
            return np.eye(4)
        up_source, up_target = self._chain(source), self._chain(target)
        common = next((f for f in up_source if f in up_target), None)
        if common is None:
            raise ConnectivityError(
                f"'{target}' and '{source}' are not connected: their trees have the roots "
                f"'{up_target[-1]}' and '{up_source[-1]}'")
        links = (up_source[:up_source.index(common)] + up_target[:up_target.index(common)])
        if stamp_ns == 0:
            dynamic = [self._links[f].stamps[-1] for f in links if not self._links[f].static]
            stamp_ns = min(dynamic) if dynamic else 0
        common_from_source = self._to_ancestor(up_source, common, stamp_ns, target, source)
        common_from_target = self._to_ancestor(up_target, common, stamp_ns, target, source)
        return geometry.invert_pose(common_from_target) @ common_from_source

    def _to_ancestor(self, chain: List[str], ancestor: str, stamp_ns: int, target: str,
                     source: str) -> FloatArray:
        pose = np.eye(4)
        for frame in chain[:chain.index(ancestor)]:
            pose = self._sample(frame, stamp_ns, target, source) @ pose
        return pose

    def _sample(self, child: str, stamp_ns: int, target: str, source: str) -> FloatArray:
        link = self._links[child]
        if link.static:
            return link.poses[0]
        stamps = link.stamps
        if stamp_ns < stamps[0] or stamp_ns > stamps[-1]:
            when = 'future' if stamp_ns > stamps[-1] else 'past'
            raise ExtrapolationError(
                f"looking up '{target}' <- '{source}' at {stamp_ns / 1e9:.6f} s would need "
                f"extrapolation into the {when}: '{link.parent}' -> '{child}' has data from "
                f'{stamps[0] / 1e9:.6f} to {stamps[-1] / 1e9:.6f} s')
        index = bisect.bisect_left(stamps, stamp_ns)
        if stamps[index] == stamp_ns:
            return link.poses[index]
        t0, t1 = stamps[index - 1], stamps[index]
        return geometry.slerp_pose(link.poses[index - 1], link.poses[index],
                                   (stamp_ns - t0) / (t1 - t0))


class TfInterface:
    """TF for a node: `lookup`, `send`, `send_static`; same API with or without tf2_ros.

    Args:
        node: the node that owns the subscriptions and publishers.
        cache_duration_s: how long dynamic transforms are kept.
        use_tf2_ros: force the backend (None: tf2_ros when importable). Tests use False.
        listen: subscribe to /tf and /tf_static (a node that only broadcasts can skip it).

    Lookups that wait (`timeout_s` > 0) need the node to be spun by another thread, as with
    tf2_ros.
    """

    def __init__(self, node: Node, cache_duration_s: float = 10.0,
                 use_tf2_ros: Optional[bool] = None, listen: bool = True) -> None:
        self._node = node
        self.uses_tf2_ros = tf2_ros is not None if use_tf2_ros is None else use_tf2_ros
        if self.uses_tf2_ros and tf2_ros is None:
            raise ImportError('use_tf2_ros=True but tf2_ros cannot be imported')
        self._static: Dict[str, TransformStamped] = {}
        self._static_lock = threading.Lock()
        self._listener = None
        if self.uses_tf2_ros:
            self._tf2_buffer = tf2_ros.Buffer(
                cache_time=rclpy.duration.Duration(seconds=cache_duration_s), node=node)
            if listen:
                self._listener = tf2_ros.TransformListener(self._tf2_buffer, node)
            self._broadcaster = tf2_ros.TransformBroadcaster(node)
            self._static_broadcaster = tf2_ros.StaticTransformBroadcaster(node)
            return
        from tf2_msgs.msg import TFMessage  # built by scripts/setup.sh in the venv
        self._tf_message = TFMessage
        self.buffer = TransformBuffer(cache_duration_s)
        self._pub = node.create_publisher(TFMessage, '/tf', TF_QOS)
        self._static_pub = node.create_publisher(TFMessage, '/tf_static', TF_STATIC_QOS)
        self._subs = []
        if listen:
            self._subs = [
                node.create_subscription(TFMessage, '/tf', self._on_tf, TF_QOS),
                node.create_subscription(TFMessage, '/tf_static', self._on_tf_static,
                                         _STATIC_LISTENER_QOS)]

    def lookup(self, target_frame: str, source_frame: str, stamp: Stamp = None,
               timeout_s: float = 0.0) -> FloatArray:
        """(4, 4) `target_from_source` at `stamp` (None or 0: latest available).

        Raises:
            TransformError (FrameNotFoundError, ConnectivityError, ExtrapolationError).
        """
        if not self.uses_tf2_ros:
            return self.buffer.lookup(target_frame, source_frame, to_ns(stamp), timeout_s)
        when = rclpy.time.Time(nanoseconds=to_ns(stamp))
        try:
            msg = self._tf2_buffer.lookup_transform(
                target_frame, source_frame, when,
                timeout=rclpy.duration.Duration(seconds=timeout_s))
        except tf2_ros.ExtrapolationException as e:
            raise ExtrapolationError(str(e)) from e
        except tf2_ros.ConnectivityException as e:
            raise ConnectivityError(str(e)) from e
        except (tf2_ros.LookupException, tf2_ros.InvalidArgumentException) as e:
            raise FrameNotFoundError(str(e)) from e
        except tf2_ros.TransformException as e:
            raise TransformError(str(e)) from e
        return conversions.transform_stamped_to_matrix(msg)

    def can_transform(self, target_frame: str, source_frame: str, stamp: Stamp = None) -> bool:
        try:
            self.lookup(target_frame, source_frame, stamp)
        except TransformError:
            return False
        return True

    def send(self, transforms: Iterable[TransformStamped]) -> None:
        """Broadcast dynamic transforms on /tf."""
        transforms = list(transforms)
        if self.uses_tf2_ros:
            self._broadcaster.sendTransform(transforms)
        else:
            self._pub.publish(self._tf_message(transforms=transforms))

    def send_static(self, transforms: Iterable[TransformStamped]) -> None:
        """Latch static transforms on /tf_static.

        As tf2_ros's StaticTransformBroadcaster does, every static transform this node ever
        sent is republished in one message (transient local keeps only the last message).
        """
        transforms = list(transforms)
        if self.uses_tf2_ros:
            self._static_broadcaster.sendTransform(transforms)
            return
        with self._static_lock:
            for t in transforms:
                self._static[t.child_frame_id] = t
            message = self._tf_message(transforms=list(self._static.values()))
        self._static_pub.publish(message)

    def clear(self) -> None:
        """Forget dynamic transforms (after simulated time jumped back)."""
        if self.uses_tf2_ros:
            self._tf2_buffer.clear()
        else:
            self.buffer.clear()

    def _on_tf(self, msg) -> None:
        self._insert(msg, static=False)

    def _on_tf_static(self, msg) -> None:
        self._insert(msg, static=True)

    def _insert(self, msg, static: bool) -> None:
        for transform in msg.transforms:
            try:
                self.buffer.set_transform_msg(transform, static)
            except ValueError as e:
                # tf2 also ignores such transforms with an error, and keeps the rest.
                self._node.get_logger().error(
                    f"ignoring TF '{transform.header.frame_id}' -> "
                    f"'{transform.child_frame_id}': {e}", throttle_duration_sec=5.0)
