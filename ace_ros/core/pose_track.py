"""Camera poses at image stamps: strict validation, in-order tracks, bracketing interpolation.

Stamps are integer nanoseconds, so ordering and exact matches are exact.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import List, Optional, Protocol

import numpy as np
import numpy.typing as npt

from ace_ros.core import geometry
# The one rigid-pose check (and its tolerance) is geometry's; re-exported for online_mapping.
from ace_ros.core.geometry import check_rigid_pose  # noqa: F401


@dataclass(frozen=True)
class PoseLookup:
    """A pose source's answer for one image stamp.

    status: 'ok' (world_from_cam is set), 'wait' (the poses that decide it may still come)
    or 'none' (this image will never get a pose; `reason` says why).
    """

    status: str
    world_from_cam: Optional[npt.NDArray[np.float64]] = None
    reason: str = ''


class PoseSource(Protocol):
    """Anything that answers 'the camera pose at this stamp' (a PoseTrack, a TF buffer)."""

    def lookup(self, stamp_ns: int) -> PoseLookup:
        ...


class PoseTrack:
    """Stamped (4, 4) world_from_cam poses received in stamp order.

    An image stamp gets the pose at exactly that stamp, or the interpolation (linear
    translation, slerp rotation) of the poses just before and just after it when both are
    within `tolerance_ns`; anything else is 'none'. Because poses arrive in order, the
    answer is final as soon as a pose at or after the stamp has arrived.
    """

    def __init__(self, tolerance_ns: int) -> None:
        self.tolerance_ns = tolerance_ns
        self._stamps: List[int] = []
        self._poses: List[npt.NDArray[np.float64]] = []

    def __len__(self) -> int:
        return len(self._stamps)

    @property
    def latest_ns(self) -> Optional[int]:
        return self._stamps[-1] if self._stamps else None

    def add(self, stamp_ns: int, world_from_cam: npt.NDArray[np.float64]) -> None:
        """Append a pose; its stamp must be newer than the last one (checked by the caller)."""
        if self._stamps and stamp_ns <= self._stamps[-1]:
            raise ValueError(f'pose stamps must increase: {stamp_ns} after {self._stamps[-1]}')
        self._stamps.append(stamp_ns)
        self._poses.append(world_from_cam)

    def forget_before(self, stamp_ns: int) -> None:
        """Drop poses no future lookup at or after `stamp_ns` can need."""
        keep_from = max(0, bisect.bisect_right(self._stamps, stamp_ns) - 1)
        if keep_from:
            del self._stamps[:keep_from], self._poses[:keep_from]

    def lookup(self, stamp_ns: int) -> PoseLookup:
        if not self._stamps or self._stamps[-1] < stamp_ns:
            return PoseLookup('wait')
        after = bisect.bisect_left(self._stamps, stamp_ns)
        if self._stamps[after] == stamp_ns:
            return PoseLookup('ok', self._poses[after].copy())
        if after == 0:
            return PoseLookup('none', reason=f'the first pose is '
                              f'{ms_text(self._stamps[0] - stamp_ns)} after the image')
        t0, t1 = self._stamps[after - 1], self._stamps[after]
        if stamp_ns - t0 > self.tolerance_ns or t1 - stamp_ns > self.tolerance_ns:
            return PoseLookup('none', reason=(
                f'the poses around the image stamp are {ms_text(stamp_ns - t0)} before and '
                f'{ms_text(t1 - stamp_ns)} after it; stamp_tolerance_s allows '
                f'{ms_text(self.tolerance_ns)} each'))
        alpha = (stamp_ns - t0) / (t1 - t0)
        return PoseLookup('ok', geometry.slerp_pose(self._poses[after - 1],
                                                    self._poses[after], alpha))


def ms_text(ns: int) -> str:
    """A nanosecond duration as milliseconds, for messages."""
    return f'{ns / 1e6:.1f} ms'


def stamp_name(stamp_ns: int) -> str:
    """Keyframe name (and file stem) for a stamp: 'SECONDS.NANOSECONDS'."""
    return f'{stamp_ns // 1_000_000_000}.{stamp_ns % 1_000_000_000:09d}'
