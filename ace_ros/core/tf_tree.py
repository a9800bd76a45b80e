"""A ROS-free TF frame tree with tf2's semantics, for live nodes and recorded bags alike.

Every child frame has one parent. Static transforms hold at all times; dynamic ones are kept
for a cache duration (None: unlimited, as a bag reader wants) and interpolated between the two
samples bracketing a stamp (linear translation, slerp rotation: `geometry.slerp_pose`).
Lookups compose the links from both frames up to their common ancestor. Like tf2, a lookup
outside a link's samples is refused rather than extrapolated; `max_gap_s` also refuses
interpolating across samples too far apart.

Stamps are int nanoseconds. Errors are `TransformError` subclasses naming frames and times.
`ace_ros.ros.tf.TfInterface` feeds this from /tf and /tf_static when tf2_ros is missing;
`ace_ros.data.rosbag_source` feeds it a whole bag's TF.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import numpy.typing as npt

from ace_ros.core import geometry

_logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]


class TransformError(Exception):
    """A transform could not be looked up."""


class FrameNotFoundError(TransformError):
    """A frame is not known to the tree."""


class ConnectivityError(TransformError):
    """Both frames are known but not in the same tree (or the tree has a loop)."""


class ExtrapolationError(TransformError):
    """The stamp is outside the samples of a link of the chain, or between two samples
    further apart than the lookup's `max_gap_s`."""


class _Link:
    """The samples of one child frame: parent, static flag, (stamp ns, 4x4) sorted by stamp."""

    def __init__(self, parent: str, static: bool) -> None:
        self.parent = parent
        self.static = static
        self.stamps: List[int] = []
        self.poses: List[FloatArray] = []


class TfTree:
    """tf2-like transform storage and lookup (stamps are int nanoseconds).

    Thread-safe: subscription callbacks insert while other threads look up.

    Args:
        cache_duration_s: how long dynamic samples are kept, counted back from a frame's
            newest sample; None or inf keeps everything (a whole recording).
    """

    def __init__(self, cache_duration_s: Optional[float] = 10.0) -> None:
        if cache_duration_s is not None and not cache_duration_s > 0:
            raise ValueError(f'cache_duration_s must be > 0 (or None: unlimited), got '
                             f'{cache_duration_s}')
        #: Cache duration in ns; None: unlimited.
        self.cache_ns: Optional[int] = (
            None if cache_duration_s is None or math.isinf(cache_duration_s)
            else int(cache_duration_s * 1e9))
        self._links: Dict[str, _Link] = {}
        self._warned: Set[str] = set()
        self._cond = threading.Condition()

    def clear(self) -> None:
        """Forget dynamic transforms (e.g. after simulated time jumped back); keep static."""
        with self._cond:
            self._links = {k: v for k, v in self._links.items() if v.static}

    def frames(self) -> List[str]:
        """All known frame names, sorted."""
        with self._cond:
            return self._frames()

    def set_transform(self, parent: str, child: str, stamp_ns: int,
                      parent_from_child: FloatArray, static: bool = False) -> None:
        """Store one sample of `parent_from_child` (4, 4); a leading '/' of a frame is dropped.

        A frame has one parent: a sample naming another parent (or switching between static
        and dynamic) replaces the frame's history, with a warning once per frame. A repeated
        stamp replaces the earlier sample. With a limited cache, a dynamic sample older than
        the newest by more than the cache duration means time jumped back (a bag restarted):
        the frame's history restarts.

        Raises:
            ValueError: for an empty frame, a frame that is its own parent, or a pose that is
                not (4, 4).
        """
        parent, child = parent.lstrip('/'), child.lstrip('/')  # ROS 1 names may be '/map'
        if not parent or not child or parent == child:
            raise ValueError(f"a transform needs two different frames, got '{parent}' -> "
                             f"'{child}'")
        pose = np.asarray(parent_from_child, dtype=np.float64)
        geometry.check_shape(pose, (4, 4), 'parent_from_child')
        with self._cond:
            link = self._links.get(child)
            if link is None or link.parent != parent or link.static != static:
                if link is not None and child not in self._warned:
                    self._warned.add(child)
                    _logger.warning(
                        "TF frame '%s' changed from %s parent '%s' to %s parent '%s'; keeping "
                        'the latest', child, 'static' if link.static else 'dynamic',
                        link.parent, 'static' if static else 'dynamic', parent)
                link = self._links[child] = _Link(parent, static)
            if static:
                link.stamps, link.poses = [stamp_ns], [pose]
            else:
                self._insert(link, stamp_ns, pose)
            self._cond.notify_all()

    def lookup(self, target: str, source: str, stamp_ns: int = 0, timeout_s: float = 0.0,
               max_gap_s: Optional[float] = None) -> FloatArray:
        """(4, 4) `target_from_source` at `stamp_ns` (0: the latest time all links share).

        Waits up to `timeout_s` for data to arrive (inserted by another thread).
        `max_gap_s`: refuse to interpolate between samples further apart (None: any gap).

        Raises:
            FrameNotFoundError, ConnectivityError, ExtrapolationError.
        """
        deadline = time.monotonic() + max(timeout_s, 0.0)
        with self._cond:
            while True:
                try:
                    up_source, up_target = self._links_between(target, source)
                    return self._compose(up_source, up_target, stamp_ns or None,
                                         _gap_ns(max_gap_s), target, source)
                except TransformError:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise
                    self._cond.wait(remaining)

    def lookup_many(self, target: str, source: str, stamps_ns: Sequence[int],
                    max_gap_s: Optional[float] = None) -> List[Optional[FloatArray]]:
        """(4, 4) `target_from_source` at each of `stamps_ns`, None where that would need
        extrapolation (or a gap wider than `max_gap_s`). Stamps are taken literally: 0 is
        time 0, not "latest".

        Raises:
            FrameNotFoundError, ConnectivityError: the frames are not chained at any time.
        """
        gap_ns = _gap_ns(max_gap_s)
        with self._cond:
            up_source, up_target = self._links_between(target, source)
            result: List[Optional[FloatArray]] = []
            for stamp_ns in stamps_ns:
                try:
                    result.append(self._compose(up_source, up_target, int(stamp_ns), gap_ns,
                                                target, source))
                except ExtrapolationError:
                    result.append(None)
        return result

    def can_transform(self, target: str, source: str, stamp_ns: int = 0) -> bool:
        try:
            self.lookup(target, source, stamp_ns)
        except TransformError:
            return False
        return True

    # -- internals (called with the lock held) --

    def _insert(self, link: _Link, stamp_ns: int, pose: FloatArray) -> None:
        if (self.cache_ns is not None and link.stamps
                and stamp_ns < link.stamps[-1] - self.cache_ns):
            link.stamps, link.poses = [], []
        index = bisect.bisect_left(link.stamps, stamp_ns)
        if index < len(link.stamps) and link.stamps[index] == stamp_ns:
            link.poses[index] = pose
        else:
            link.stamps.insert(index, stamp_ns)
            link.poses.insert(index, pose)
        if self.cache_ns is not None:
            cut = bisect.bisect_left(link.stamps, link.stamps[-1] - self.cache_ns)
            if cut:
                del link.stamps[:cut], link.poses[:cut]

    def _frames(self) -> List[str]:
        return sorted(set(self._links) | {link.parent for link in self._links.values()})

    def _chain(self, frame: str) -> List[str]:
        """[frame, parent, grandparent, ..., root]."""
        chain = [frame]
        while chain[-1] in self._links:
            parent = self._links[chain[-1]].parent
            if parent in chain:
                raise ConnectivityError(f"TF has a loop through '{parent}': {chain}")
            chain.append(parent)
        return chain

    def _links_between(self, target: str, source: str) -> Tuple[List[str], List[str]]:
        """The child frames of the links from `source` and from `target` up to their common
        ancestor (each list ordered upwards)."""
        target, source = target.lstrip('/'), source.lstrip('/')
        for frame in (target, source):
            if frame not in self._links and all(
                    link.parent != frame for link in self._links.values()):
                raise FrameNotFoundError(f"frame '{frame}' does not exist in TF (looking up "
                                         f"'{target}' <- '{source}'); known frames: "
                                         f'{self._frames()}')
        up_source, up_target = self._chain(source), self._chain(target)
        common = next((f for f in up_source if f in up_target), None)
        if common is None:
            raise ConnectivityError(
                f"'{target}' and '{source}' are not connected: their trees have the roots "
                f"'{up_target[-1]}' and '{up_source[-1]}'")
        return up_source[:up_source.index(common)], up_target[:up_target.index(common)]

    def _compose(self, up_source: List[str], up_target: List[str], stamp_ns: Optional[int],
                 gap_ns: Optional[int], target: str, source: str) -> FloatArray:
        """`target_from_source` at `stamp_ns` (None: the latest time all dynamic links share)."""
        if stamp_ns is None:
            dynamic = [self._links[f].stamps[-1] for f in up_source + up_target
                       if not self._links[f].static]
            stamp_ns = min(dynamic) if dynamic else 0
        common_from_source, common_from_target = np.eye(4), np.eye(4)
        for frame in up_source:
            common_from_source = (self._sample(frame, stamp_ns, gap_ns, target, source)
                                  @ common_from_source)
        for frame in up_target:
            common_from_target = (self._sample(frame, stamp_ns, gap_ns, target, source)
                                  @ common_from_target)
        return geometry.invert_pose(common_from_target) @ common_from_source

    def _sample(self, child: str, stamp_ns: int, gap_ns: Optional[int], target: str,
                source: str) -> FloatArray:
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
        if gap_ns is not None and t1 - t0 > gap_ns:
            raise ExtrapolationError(
                f"looking up '{target}' <- '{source}' at {stamp_ns / 1e9:.6f} s: "
                f"'{link.parent}' -> '{child}' has samples at {t0 / 1e9:.6f} and "
                f'{t1 / 1e9:.6f} s, further apart than {gap_ns / 1e9:.6f} s')
        return geometry.slerp_pose(link.poses[index - 1], link.poses[index],
                                   (stamp_ns - t0) / (t1 - t0))


def _gap_ns(max_gap_s: Optional[float]) -> Optional[int]:
    if max_gap_s is None or math.isinf(max_gap_s):
        return None
    if not max_gap_s > 0:
        raise ValueError(f'max_gap_s must be > 0 (or None: any gap), got {max_gap_s}')
    return round(max_gap_s * 1e9)
