"""Diagnostics on /diagnostics (diagnostic_msgs/DiagnosticArray), like diagnostic_updater.

`Diagnostics(node)` publishes, every `period_s`, one DiagnosticStatus per registered task;
a task is a function returning a `Report` (level, message, key/values). `RateMeter` and
`WindowStats` are the small ROS-free counters nodes feed from their callbacks.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
import threading
import time
from typing import Callable, Deque, Dict, List, Mapping, Optional, Sequence, Tuple

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.clock import Clock, ClockType
from rclpy.node import Node

# DiagnosticStatus levels are one-byte `bytes` in rclpy; these are the plain ints.
OK, WARN, ERROR, STALE = 0, 1, 2, 3


@dataclass
class Report:
    """What a diagnostic task says: level (OK/WARN/ERROR/STALE), a message, key values."""

    level: int  # OK, WARN, ERROR or STALE
    message: str
    values: Dict[str, object] = field(default_factory=dict)


class RateMeter:
    """Events per second over a sliding window (wall clock); thread-safe."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self.count = 0
        self._times: Deque[float] = collections.deque()
        self._lock = threading.Lock()

    def tick(self, now: Optional[float] = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self.count += 1
            self._times.append(now)
            self._trim(now)

    def rate(self, now: Optional[float] = None) -> float:
        """Events per second in the last window (0 with fewer than two events)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._trim(now)
            if len(self._times) < 2:
                return 0.0
            span = max(now - self._times[0], self._times[-1] - self._times[0])
            return (len(self._times) - 1) / span if span > 0 else 0.0

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] < now - self.window_s:
            self._times.popleft()


class WindowStats:
    """Mean and max of the last `size` values per key (e.g. per-stage latency); thread-safe."""

    def __init__(self, size: int = 50) -> None:
        self._values: Dict[str, Deque[float]] = collections.defaultdict(
            lambda: collections.deque(maxlen=size))
        self._lock = threading.Lock()

    def add(self, values: Mapping[str, float]) -> None:
        with self._lock:
            for key, value in values.items():
                self._values[key].append(float(value))

    def summary(self) -> Dict[str, Tuple[float, float]]:
        """{key: (mean, max)} over the window."""
        with self._lock:
            return {k: (sum(v) / len(v), max(v)) for k, v in self._values.items() if v}


def _format(value: object) -> str:
    if isinstance(value, float):
        return f'{value:.4g}'
    return str(value)


class Diagnostics:
    """Publishes registered tasks on /diagnostics at a fixed period.

    Args:
        node: publishing node; statuses are named '<node name>: <task>'.
        hardware_id: DiagnosticStatus.hardware_id (e.g. the device the engine runs on).
        period_s: publication period, wall clock (diagnostic_updater's default is 1 s);
            0 = no timer (call `publish` yourself).
    """

    def __init__(self, node: Node, hardware_id: str = '', period_s: float = 1.0) -> None:
        self._node = node
        self.hardware_id = hardware_id
        self._tasks: List[Tuple[str, Callable[[], Report]]] = []
        self._pub = node.create_publisher(DiagnosticArray, '/diagnostics', 10)
        # Steady clock: diagnostics keep coming while simulated time is paused or absent.
        self._timer = node.create_timer(
            period_s, self.publish, clock=Clock(clock_type=ClockType.STEADY_TIME)
        ) if period_s > 0 else None

    def destroy(self) -> None:
        """Remove the timer and the publisher from the node (a lifecycle cleanup)."""
        if self._timer is not None:
            self._node.destroy_timer(self._timer)
            self._timer = None
        self._node.destroy_publisher(self._pub)

    def add_task(self, name: str, task: Callable[[], Report]) -> None:
        self._tasks.append((name, task))

    def statuses(self) -> List[DiagnosticStatus]:
        """Run every task once; a task that raises reports ERROR instead of stopping others."""
        out = []
        for name, task in self._tasks:
            try:
                report = task()
            except Exception as e:  # noqa: BLE001 - a diagnostics bug must not kill the node
                report = Report(ERROR, f'diagnostic task failed: {type(e).__name__}: {e}')
            out.append(DiagnosticStatus(
                level=bytes([report.level]), name=f'{self._node.get_name()}: {name}',
                message=report.message, hardware_id=self.hardware_id,
                values=[KeyValue(key=k, value=_format(v)) for k, v in report.values.items()]))
        return out

    def publish(self) -> None:
        msg = DiagnosticArray()
        msg.header.stamp = self._node.get_clock().now().to_msg()
        msg.status = self.statuses()
        self._pub.publish(msg)


def latest_values(arrays: Sequence[DiagnosticArray], name: str) -> Dict[str, str]:
    """A /diagnostics client's view: the key values of the newest status called `name` in the
    `arrays` received so far, oldest first ({} before the first)."""
    for array in reversed(arrays):
        for status in array.status:
            if status.name == name:
                return {kv.key: kv.value for kv in status.values}
    return {}
