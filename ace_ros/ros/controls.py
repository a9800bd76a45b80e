"""The localization node's controls without ROS: mode, pause, trigger, and the initialpose gate.

`Controls` decides which images are localized: in `continuous` mode every image (the newest
one, as before) unless paused; in `on_demand` mode only the first image received after a
~/trigger (several triggers before it still localize one image). Paused, nothing is
localized, whatever the mode, and a trigger is refused (a pause is a hard stop, e.g. to
give the CPU to something else; ~/resume ends it).

`PoseGate` holds a prior from `initialpose` (RViz's "2D Pose Estimate"): the pose, in the
map frame, of the frame ~/pose is of (base_frame; the camera in the fallbacks). While it is
set, a localized pose is accepted only if it lies within `gate_m` (in the map's x-y plane)
and `gate_deg` (heading: the yaw of the frame's x axis, REP-103 forward) of the prior; the
first accepted pose lifts the gate, so the prior only decides where localization resumes
(e.g. away from a look-alike place). The plane and the heading are what a 2D pose estimate
gives: z, roll and pitch are not compared (map z is up, REP-105). With odometry the prior
moves with the robot: it is kept as map -> odom (`anchor`, with odom -> base at the prior's
stamp), so that a prior given a while before the next good image is still where the robot
is.

Nothing here imports rclpy or a message package (a unit test checks it).
"""

from __future__ import annotations

from dataclasses import dataclass
import math
import threading
from typing import Optional, Tuple

from ace_ros.core import geometry
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

MODES = ('continuous', 'on_demand')


def check_mode(mode: str) -> str:
    """`mode`, or ValueError naming the parameter and the choices."""
    if mode not in MODES:
        raise ValueError(f"parameter mode must be one of {list(MODES)}, got '{mode}'")
    return mode


class Controls:
    """Which images to localize: mode, pause and pending trigger; thread-safe (services
    and the image callback may run on different executor threads)."""

    def __init__(self, mode: str = 'continuous') -> None:
        self._mode = check_mode(mode)
        self._paused = False
        self._triggered = False
        self._lock = threading.Lock()

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        with self._lock:
            self._mode = check_mode(mode)

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> str:
        """Stop localizing; the message for the service's reply."""
        with self._lock:
            was, self._paused = self._paused, True
            self._triggered = False
        return 'already paused' if was else 'paused: no image is localized until ~/resume'

    def resume(self) -> str:
        with self._lock:
            was, self._paused = self._paused, False
        if not was:
            return 'not paused'
        return (f'resumed ({self._mode}' +
                (': the next ~/trigger localizes one image)' if self._mode == 'on_demand'
                 else ')'))

    def trigger(self) -> Tuple[bool, str]:
        """(success, message): localize the next image received."""
        with self._lock:
            if self._paused:
                return False, 'paused: call ~/resume first'
            if self._mode == 'continuous':
                return True, 'continuous mode: every image is localized anyway'
            self._triggered = True
        return True, 'the next image received will be localized'

    def reset(self) -> None:
        """Forget a pending trigger (mode and pause stay as they are)."""
        with self._lock:
            self._triggered = False

    def admit(self) -> Optional[str]:
        """Called once per received image: None = localize it, else why not ('paused' or
        'untriggered', the name of the counter to add to). Consumes a pending trigger."""
        with self._lock:
            if self._paused:
                return 'paused'
            if self._mode == 'continuous':
                return None
            if self._triggered:
                self._triggered = False
                return None
            return 'untriggered'


def planar_heading_rad(frame_from_child: FloatArray) -> Optional[float]:
    """Yaw of the child's x axis in the parent's x-y plane (rad); None where that axis is
    (nearly) vertical and has no heading.

    >>> round(planar_heading_rad(geometry.make_pose(
    ...     geometry.axis_angle_to_matrix([0, 0, 0.5]), [0, 0, 0])), 6)
    0.5
    """
    x_axis = frame_from_child[:3, 0]
    if math.hypot(x_axis[0], x_axis[1]) < 1e-3:
        return None
    return math.atan2(x_axis[1], x_axis[0])


def planar_difference(a: FloatArray, b: FloatArray) -> Tuple[float, float]:
    """(distance in the x-y plane (m), heading difference (deg, 0..180)) of two (4, 4)
    poses in the same frame; the heading difference is 0 when either has no heading."""
    distance = math.hypot(a[0, 3] - b[0, 3], a[1, 3] - b[1, 3])
    ha, hb = planar_heading_rad(a), planar_heading_rad(b)
    if ha is None or hb is None:
        return distance, 0.0
    diff = abs((ha - hb + math.pi) % (2 * math.pi) - math.pi)
    return distance, math.degrees(diff)


@dataclass(frozen=True)
class GateResult:
    """What the gate said about one pose."""

    accepted: bool
    distance_m: float
    heading_deg: float


class PoseGate:
    """Accept poses only near an initialpose prior, until one is accepted (module doc)."""

    def __init__(self, gate_m: float, gate_deg: float) -> None:
        if not gate_m > 0:
            raise ValueError(f'parameter initialpose_gate_m must be > 0 (m), got {gate_m}')
        if not 0 < gate_deg <= 180:
            raise ValueError('parameter initialpose_gate_deg must be in (0, 180] (deg; 180 = '
                             f'position only), got {gate_deg}')
        self.gate_m, self.gate_deg = float(gate_m), float(gate_deg)
        self._lock = threading.Lock()
        self._prior: Optional[FloatArray] = None
        self._stamp_ns = 0
        self._map_from_odom: Optional[FloatArray] = None
        self._anchored = False

    @property
    def pending(self) -> bool:
        """A prior is set: poses are checked."""
        return self._prior is not None

    @property
    def needs_anchor(self) -> bool:
        """A prior is set and `anchor` was not called for it yet."""
        return self._prior is not None and not self._anchored

    @property
    def prior_stamp_ns(self) -> int:
        return self._stamp_ns

    def set_prior(self, map_from_body: FloatArray, stamp_ns: int) -> None:
        """A new prior (it replaces the old one): (4, 4) pose in the map frame at
        `stamp_ns` (0: now)."""
        geometry.check_rigid_pose(map_from_body, 'initialpose')
        with self._lock:
            self._prior = np.array(map_from_body, dtype=np.float64)
            self._stamp_ns = int(stamp_ns)
            self._map_from_odom, self._anchored = None, False

    def anchor(self, odom_from_body: Optional[FloatArray]) -> None:
        """Tie the prior to odometry: `odom_from_body` (4, 4) at the prior's stamp, or None
        when there is none (the prior then stays where it was given)."""
        with self._lock:
            if self._prior is None:
                return
            self._anchored = True
            if odom_from_body is not None:
                self._map_from_odom = self._prior @ geometry.invert_pose(odom_from_body)

    def expected(self, odom_from_body: Optional[FloatArray] = None) -> Optional[FloatArray]:
        """The prior at the time of `odom_from_body` (4, 4; moved with odometry when
        anchored to it), or None when no prior is set."""
        with self._lock:
            if self._map_from_odom is not None and odom_from_body is not None:
                return self._map_from_odom @ odom_from_body
            return None if self._prior is None else self._prior.copy()

    def check(self, map_from_body: FloatArray,
              odom_from_body: Optional[FloatArray] = None) -> GateResult:
        """Is `map_from_body` (4, 4) near the prior? An accepted pose lifts the gate; with
        no prior every pose is accepted."""
        expected = self.expected(odom_from_body)
        if expected is None:
            return GateResult(True, 0.0, 0.0)
        distance, heading = planar_difference(expected, map_from_body)
        accepted = distance <= self.gate_m and heading <= self.gate_deg
        if accepted:
            self.clear()
        return GateResult(accepted, distance, heading)

    def clear(self) -> None:
        with self._lock:
            self._prior, self._map_from_odom, self._anchored = None, None, False
