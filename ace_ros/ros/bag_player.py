"""Replay a ROS bag over ROS 2 without rosbag2: `BagPlayer(bag).run(node)` or `play_bag(bag)`.

Publishes the stored serialised messages as they are (`publisher.publish(bytes)`, no
deserialisation) with the recorded timing scaled by a rate factor, and /clock like
`ros2 bag play --clock`. rclpy and the message packages are imported only when playing, so
the rest of ace_ros works without ROS.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
import importlib
import logging
from pathlib import Path
import threading
import time
from typing import Any, Optional, Sequence

from ace_ros.data.rosbag_source import bag_path, open_reader

_logger = logging.getLogger(__name__)


@dataclass
class PlayStats:
    """What a `BagPlayer.run` published."""

    messages: dict = field(default_factory=dict)  # topic -> count
    skipped_topics: dict = field(default_factory=dict)  # topic -> reason
    clock_messages: int = 0
    loops: int = 0
    wall_s: float = 0.0
    max_lateness_s: float = 0.0


class BagPlayer:
    """Publishes a bag's stored messages (raw CDR, no deserialisation) with their timing.

    Meant for machines without `ros2 bag play`: drive it from a thread with an rclpy node
    (`run`), or through `play_bag` / `ace-ros play`, which own rclpy.

    Args:
        bag: rosbag2 folder or ROS 1 `.bag` (ROS 1 messages are converted to CDR).
        rate: playback speed factor (2.0: twice as fast).
        loop: start over at the end until `stop()`.
        clock_hz: publish rosgraph_msgs/Clock on /clock at this rate, as
            `ros2 bag play --clock`, and at each message's time just before it; 0: no /clock.
        topics: publish only these topics (default: all).
    """

    def __init__(self, bag: str | Path, rate: float = 1.0, loop: bool = False,
                 clock_hz: float = 100.0, topics: Optional[Sequence[str]] = None) -> None:
        if rate <= 0:
            raise ValueError(f'rate must be > 0, got {rate}')
        if clock_hz < 0:
            raise ValueError(f'clock_hz must be >= 0, got {clock_hz}')
        self.bag = bag_path(bag)
        self.rate, self.loop, self.clock_hz = rate, loop, clock_hz
        self.topics = list(topics) if topics else None
        self._stop = threading.Event()
        self._ros2_types: Any = None

    def stop(self) -> None:
        """Make `run` return after the message in flight (thread-safe)."""
        self._stop.set()

    def run(self, node: Any, wait_for_subscribers: Sequence[str] = (),
            wait_timeout_s: float = 10.0) -> PlayStats:
        """Create publishers on `node` and play; blocks until the end (or `stop()`).

        Args:
            node: an rclpy Node (rclpy initialised by the caller).
            wait_for_subscribers: topics that must each have a subscriber before playing.
            wait_timeout_s: how long to wait for them.

        Raises:
            ValueError: for unknown topics, or when subscribers did not appear in time.
        """
        stats = PlayStats()
        start = time.monotonic()
        with contextlib.closing(open_reader(self.bag)) as reader:
            publishers = self._publishers(node, reader, stats)
            clock = _clock_publisher(node) if self.clock_hz > 0 else None
            _wait_for_subscribers({**publishers, **({'/clock': clock} if clock else {})},
                                  wait_for_subscribers, wait_timeout_s)
            connections = [c for c in reader.connections if c.topic in publishers]
            while not self._stop.is_set():
                self._play_once(reader, connections, publishers, clock, stats)
                stats.loops += 1
                if not self.loop:
                    break
            # Reliable messages still in flight are lost if the process exits now.
            from rclpy.duration import Duration
            for publisher in publishers.values():
                publisher.wait_for_all_acked(Duration(seconds=2))
        stats.wall_s = time.monotonic() - start
        return stats

    def _publishers(self, node: Any, reader: Any, stats: PlayStats) -> dict[str, Any]:
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        topics = {name: info for name, info in reader.topics.items()
                  if self.topics is None or name in self.topics}
        missing = sorted(set(self.topics or ()) - set(topics))
        if missing:
            raise ValueError(f'{self.bag}: no topics {missing}; it has {sorted(reader.topics)}')
        publishers = {}
        # ROS 1 messages become CDR through ROS 2 definitions (std_msgs/Header loses seq).
        ros2_types = self._ros2_types = None if reader.is2 else _ros2_typestore()
        for name, info in sorted(topics.items()):
            try:
                if ros2_types is not None and info.msgtype not in ros2_types.fielddefs:
                    raise ImportError('no ROS 2 definition to convert this ROS 1 type to')
                msg_class = _message_class(info.msgtype)
            except (ImportError, AttributeError) as error:
                stats.skipped_topics[name] = f'{info.msgtype}: {error}'
                _logger.warning('not publishing %s: no Python message type %s here (%s)', name,
                                info.msgtype, error)
                continue
            latched = name == '/tf_static' or any(_latched(c) for c in info.connections)
            qos = QoSProfile(depth=100 if latched else 10,
                             reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL if latched
                             else DurabilityPolicy.VOLATILE)
            publishers[name] = node.create_publisher(msg_class, name, qos)
            stats.messages[name] = 0
        return publishers

    def _play_once(self, reader: Any, connections: list, publishers: dict, clock: Any,
                   stats: PlayStats) -> None:
        start_wall, start_bag = time.monotonic(), None
        ros2_types = self._ros2_types
        period = 1.0 / self.clock_hz if clock is not None else float('inf')
        next_clock = start_wall if clock is not None else float('inf')
        last_clock = -1

        def tick(bag_ns: int) -> None:
            nonlocal last_clock
            if bag_ns > last_clock:  # /clock never repeats or goes back within a pass
                clock.publish(_clock_msg(bag_ns))
                stats.clock_messages += 1
                last_clock = bag_ns

        for connection, log_time, raw in reader.messages(connections=connections):
            if start_bag is None:
                start_bag = log_time
            due = start_wall + (log_time - start_bag) / 1e9 / self.rate
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_clock:
                    tick(min(start_bag + int((now - start_wall) * self.rate * 1e9), log_time))
                    next_clock += period * max(1, int((now - next_clock) / period) + 1)
                if now >= due:
                    break
                time.sleep(max(0.0, min(due, next_clock) - now))
            if self._stop.is_set():
                return
            stats.max_lateness_s = max(stats.max_lateness_s, time.monotonic() - due)
            if clock is not None:
                tick(log_time)  # sim time reaches the stamp before the message arrives
            if ros2_types is not None:
                raw = ros2_types.ros1_to_cdr(raw, connection.msgtype)
            publishers[connection.topic].publish(raw if isinstance(raw, bytes) else bytes(raw))
            stats.messages[connection.topic] += 1


def require_rclpy() -> None:
    """Refuse at once, with what to do, where rclpy is missing (`ace-ros play`).

    Raises:
        ValueError: naming rclpy and the import error.
    """
    try:
        import rclpy  # noqa: F401  (only to give a clear message when ROS is missing)
    except ImportError as error:
        raise ValueError(f'ace-ros play needs rclpy (ROS 2 Python): source a ROS 2 '
                         f'installation or run scripts/setup.sh ({error})') from None


def play_bag(bag: str | Path, rate: float = 1.0, loop: bool = False, clock_hz: float = 100.0,
             topics: Optional[Sequence[str]] = None, wait_for_subscribers: Sequence[str] = (),
             wait_timeout_s: float = 10.0, node_name: str = 'ace_ros_bag_player') -> PlayStats:
    """Initialise rclpy, play `bag` on a node of its own (see `BagPlayer`), shut down."""
    import rclpy
    from rclpy.executors import ExternalShutdownException
    player = BagPlayer(bag, rate, loop, clock_hz, topics)
    rclpy.init()
    try:
        node = rclpy.create_node(node_name)
        try:
            return player.run(node, wait_for_subscribers, wait_timeout_s)
        except ExternalShutdownException:
            return PlayStats()
        finally:
            node.destroy_node()
    finally:
        rclpy.try_shutdown()


def _ros2_typestore() -> Any:
    from rosbags.typesys import get_typestore, Stores
    return get_typestore(Stores.LATEST)


def _message_class(msgtype: str) -> Any:
    package, kind, name = msgtype.split('/')
    return getattr(importlib.import_module(f'{package}.{kind}'), name)


def _latched(connection: Any) -> bool:
    ext = connection.ext
    if hasattr(ext, 'latching'):
        return bool(ext.latching)
    return any(q.durability.name == 'TRANSIENT_LOCAL' for q in ext.offered_qos_profiles)


def _clock_publisher(node: Any) -> Any:
    from rclpy.qos import QoSProfile
    from rosgraph_msgs.msg import Clock
    return node.create_publisher(Clock, '/clock', QoSProfile(depth=10))


def _clock_msg(stamp_ns: int) -> Any:
    from builtin_interfaces.msg import Time
    from rosgraph_msgs.msg import Clock
    return Clock(clock=Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000))


_DISCOVERY_SETTLE_S = 0.5


def _wait_for_subscribers(publishers: dict, topics: Sequence[str], timeout_s: float) -> None:
    unknown = [t for t in topics if t not in publishers]
    if unknown:
        raise ValueError(f'cannot wait for subscribers of {unknown}: not published (have '
                         f'{sorted(publishers)})')
    deadline = time.monotonic() + timeout_s
    while any(publishers[t].get_subscription_count() == 0 for t in topics):
        if time.monotonic() > deadline:
            waiting = [t for t in topics if publishers[t].get_subscription_count() == 0]
            raise ValueError(f'no subscriber on {waiting} after {timeout_s:.0f} s')
        time.sleep(0.05)
    if topics:
        # The publisher sees the match before the subscriber's side has matched it back;
        # messages sent in between can be lost (seen under load), so let discovery settle.
        time.sleep(_DISCOVERY_SETTLE_S)
