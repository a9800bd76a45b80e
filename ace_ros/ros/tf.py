"""One TF interface for both nodes: tf2_ros where it exists, else a small /tf adapter.

`TfInterface(node)` gives `lookup()` (a chain of transforms at a stamp, as a 4x4 matrix),
`send()` (dynamic, /tf) and `send_static()` (/tf_static, transient local), plus `parent()`
(a frame's parent, to avoid re-parenting it) and `connected()`. With tf2_ros
importable (any ROS 2 distribution) it wraps tf2_ros.Buffer, TransformListener,
TransformBroadcaster and StaticTransformBroadcaster. Without it (the PyPI wheels have no
tf2_ros), it subscribes and publishes tf2_msgs/TFMessage itself with tf2_ros's QoS, and
the ROS-free `ace_ros.core.tf_tree.TfTree` answers lookups with tf2's semantics (a tree of
frames, one parent each, linear/slerp interpolation, a cache duration, static transforms
valid at all times, stamp 0 meaning "latest common time").

All errors are `TransformError` subclasses (from `ace_ros.core.tf_tree`, re-exported here),
whichever backend is used.

`StampFloor` (keeps the stamps of a future-dated transform, AMCL's map -> odom, from going
backwards) lives in the ROS-free `ace_ros.ros.timing` and is re-exported here.
"""

from __future__ import annotations

import threading
from typing import Dict, Iterable, Optional, Tuple, Union

from ace_ros.core.tf_tree import (ConnectivityError, ExtrapolationError, FrameNotFoundError,
                                  TfTree, TransformError)
from ace_ros.ros import conversions
from ace_ros.ros.timing import StampFloor  # noqa: F401 - re-exported
from builtin_interfaces.msg import Time as TimeMsg
from geometry_msgs.msg import TransformStamped
import numpy as np
import numpy.typing as npt
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
import rclpy.duration
import rclpy.time
import yaml

try:  # tf2_ros exists on every ROS 2 distribution, not in the PyPI wheels
    import tf2_ros
except ImportError:  # pragma: no cover - depends on the environment
    tf2_ros = None

#: The former name of the ROS-free buffer, kept for existing imports.
TransformBuffer = TfTree

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


def to_ns(stamp: Stamp) -> int:
    """None / int ns / builtin_interfaces Time / rclpy Time -> int ns (0 = latest)."""
    if stamp is None:
        return 0
    if isinstance(stamp, rclpy.time.Time):
        return int(stamp.nanoseconds)
    if isinstance(stamp, TimeMsg):
        return conversions.stamp_to_ns(stamp)
    return int(stamp)


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
        # Without tf2_ros: child frame -> (its latest parent, static), as the tree keeps it.
        self._parents: Dict[str, Tuple[str, bool]] = {}
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
        self.buffer = TfTree(cache_duration_s)
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

    def connected(self, target_frame: str, source_frame: str) -> bool:
        """Both frames are in TF and in one tree now (no waiting; any stamp).

        Tells "this frame is not published at all" (no point waiting for it) from "not yet
        at this stamp" (worth a lookup with a timeout).
        """
        try:
            self.lookup(target_frame, source_frame)
        except (FrameNotFoundError, ConnectivityError):
            return False
        except TransformError:  # extrapolation: linked, but not at the latest common time
            return True
        return True

    def parent(self, frame: str) -> Optional[str]:
        """The frame's parent in TF now (the latest one heard), None for a root or unknown
        frame. Transforms this node sent itself are heard too."""
        frame = frame.lstrip('/')
        if not self.uses_tf2_ros:
            link = self._parents.get(frame)
            return link[0] if link else None
        try:
            tree = yaml.safe_load(self._tf2_buffer.all_frames_as_yaml())
        except (yaml.YAMLError, RuntimeError):
            return None
        entry = tree.get(frame) if isinstance(tree, dict) else None
        parent = entry.get('parent') if isinstance(entry, dict) else None
        return str(parent).lstrip('/') if parent else None

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

    def destroy(self) -> None:
        """Remove the subscriptions and publishers from the node (a lifecycle cleanup)."""
        node = self._node
        if self.uses_tf2_ros:
            if self._listener is not None:
                self._listener.unregister()
                self._listener = None
            for broadcaster in (self._broadcaster, self._static_broadcaster):
                node.destroy_publisher(broadcaster.pub_tf)
            return
        for sub in self._subs:
            node.destroy_subscription(sub)
        self._subs = []
        node.destroy_publisher(self._pub)
        node.destroy_publisher(self._static_pub)

    def clear(self) -> None:
        """Forget dynamic transforms (after time jumped back); static ones are kept."""
        if self.uses_tf2_ros:
            self._tf2_buffer.clear()
        else:
            self.buffer.clear()
            self._parents = {k: v for k, v in self._parents.items() if v[1]}

    def _on_tf(self, msg) -> None:
        self._insert(msg, static=False)

    def _on_tf_static(self, msg) -> None:
        self._insert(msg, static=True)

    def _insert(self, msg, static: bool) -> None:
        for transform in msg.transforms:
            try:
                self.buffer.set_transform(transform.header.frame_id, transform.child_frame_id,
                                          conversions.stamp_to_ns(transform.header.stamp),
                                          conversions.transform_to_matrix(transform.transform),
                                          static)
                self._parents[transform.child_frame_id.lstrip('/')] = (
                    transform.header.frame_id.lstrip('/'), static)
            except ValueError as e:
                # tf2 also ignores such transforms with an error, and keeps the rest.
                self._node.get_logger().error(
                    f"ignoring TF '{transform.header.frame_id}' -> "
                    f"'{transform.child_frame_id}': {e}", throttle_duration_sec=5.0)
