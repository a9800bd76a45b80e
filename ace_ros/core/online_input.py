"""The online mapping session's input: images and poses checked, then paired by stamp.

Images and poses may arrive in either order; an image gets a pose only from poses that
bracket its stamp closely (or one at its exact stamp), never from a guess. An image whose
pose is not decided yet waits (in stamp order) until one arrives, or until images
max_pose_wait_s newer have (stream time, not wall time). Not thread-safe: the session calls
it under its lock.

Stamps are integer nanoseconds (see pose_track.py).
"""

from __future__ import annotations

import collections
import logging
import math
import re
import time
from typing import Callable, Deque, Dict, Iterable, Optional, Tuple

import numpy as np
import numpy.typing as npt

from ace_ros.core import geometry
from ace_ros.core.pose_track import (PoseLookup, PoseSource, PoseTrack, check_rigid_pose,
                                     ms_text, stamp_name)
from ace_ros.core.types import Frame

# The session's logger: the node and the tests follow the session's messages by its name.
_logger = logging.getLogger('ace_ros.core.online_mapping')

_WARN_EVERY_S = 5.0


class Tally:
    """The session's outcome and rejection counters; rejections are logged, throttled."""

    def __init__(self, names: Iterable[str]) -> None:
        self.counts: Dict[str, int] = {name: 0 for name in names}
        self._last_warned: Dict[str, Tuple[float, int]] = {}

    def reject(self, reason: str, message: str) -> str:
        """Count `reason` and log `message`, throttled per kind of problem; returns `reason`.

        Each kind is logged the first time, then at most every 5 s; messages that differ
        only in numbers are the same kind.
        """
        self.counts[reason] = self.counts.get(reason, 0) + 1
        key = re.sub(r'\d+', '#', message)
        now = time.monotonic()
        last, suppressed = self._last_warned.get(key, (-math.inf, 0))
        if now - last >= _WARN_EVERY_S:
            more = f' ({suppressed} more like this since the last report)' if suppressed else ''
            _logger.warning('%s%s', message, more)
            self._last_warned[key] = (now, 0)
        else:
            self._last_warned[key] = (last, suppressed + 1)
        return reason


class PoseMatcher:
    """Checks images and poses as they arrive and gives each image its pose.

    Args:
        track: the poses given to `add_pose`.
        pose_source: where image poses are looked up (`track`, or e.g. TF).
        world_frame_id: frame the poses are in; '' = the frame of the first pose.
        max_pose_wait_s: see OnlineMappingConfig.
        tally: counts and logs what is refused.
        on_posed: takes an image that got its pose; returns what became of it.
    """

    def __init__(self, track: PoseTrack, pose_source: PoseSource, world_frame_id: str,
                 max_pose_wait_s: float, tally: Tally,
                 on_posed: Callable[[Frame], str]) -> None:
        self._track = track
        self._pose_source = pose_source
        self.world_frame_id = world_frame_id
        self._max_pose_wait_s = max_pose_wait_s
        self._tally = tally
        self._on_posed = on_posed
        self._pending: Deque[Tuple[int, Frame]] = collections.deque()
        self._last_image_ns: Optional[int] = None
        self._last_pose_ns: Optional[int] = None

    @property
    def pending(self) -> int:
        """Images waiting for their bracketing pose."""
        return len(self._pending)

    def add_pose(self, stamp_ns: int, world_from_cam: npt.ArrayLike, frame_id: str) -> str:
        """See OnlineMappingSession.add_pose."""
        self._tally.counts['poses'] += 1
        try:
            world_from_cam = check_rigid_pose(world_from_cam)
        except ValueError as error:
            return self._tally.reject('pose_invalid', f'pose at {stamp_name(stamp_ns)} '
                                      f'refused: {error}')
        if frame_id and self.world_frame_id and frame_id != self.world_frame_id:
            return self._tally.reject('pose_wrong_frame', f'pose at {stamp_name(stamp_ns)} '
                                      f"refused: it is in frame '{frame_id}', mapping uses "
                                      f"'{self.world_frame_id}' (the configured fixed frame, "
                                      'or the frame of the first pose)')
        refused = self._check_order('pose', stamp_ns, self._last_pose_ns)
        if refused:
            return refused
        if frame_id and not self.world_frame_id:
            self.world_frame_id = frame_id
        self._last_pose_ns = stamp_ns
        self._track.add(stamp_ns, world_from_cam)
        self.resolve()
        return 'ok'

    def add_image(self, image: npt.NDArray[np.uint8], K: npt.NDArray[np.float64],
                  stamp_ns: int) -> str:
        """See OnlineMappingSession.add_image."""
        self._tally.counts['images'] += 1
        if stamp_ns <= 0:
            return self._tally.reject('image_invalid', f'image refused: its stamp is '
                                      f'{stamp_ns} (unset); images need their capture time')
        refused = self._check_order('image', stamp_ns, self._last_image_ns)
        if refused:
            return refused
        try:
            # A copy: a keyframe must not alias a message buffer the caller reuses.
            frame = Frame(stamp_name(stamp_ns), np.array(image), _checked_K(K),
                          stamp=stamp_ns / 1e9)
        except ValueError as error:
            return self._tally.reject('image_invalid', f'image at {stamp_name(stamp_ns)} '
                                      f'refused: {error}')
        self._last_image_ns = stamp_ns
        self._pending.append((stamp_ns, frame))
        return self.resolve(stamp_ns) or 'pending'

    def resolve(self, newest_ns: Optional[int] = None, final: bool = False) -> str:
        """Decide waiting images in order; returns the outcome of the image at `newest_ns`.

        `final`: no pose will come any more (mapping finishes): every waiting image is
        decided.
        """
        outcome = ''
        max_wait_ns = int(round(self._max_pose_wait_s * 1e9))
        while self._pending:
            stamp_ns, frame = self._pending[0]
            found = self._pose_source.lookup(stamp_ns)
            if found.status == 'wait':
                if final:
                    found = PoseLookup('none', reason='no pose at or after its stamp arrived '
                                       'before mapping finished')
                elif self._last_image_ns - stamp_ns > max_wait_ns:
                    found = PoseLookup('none', reason='no pose at or after its stamp arrived '
                                       f'within max_pose_wait_s ({self._max_pose_wait_s}'
                                       ' s of newer images)')
                else:
                    break
            self._pending.popleft()
            if found.status == 'ok':
                frame.world_from_cam = found.world_from_cam
                result = self._on_posed(frame)
            else:
                result = self._tally.reject('no_pose', f'image {frame.name} has no pose: '
                                            f'{found.reason}')
            if stamp_ns == newest_ns:
                outcome = result
        self._track.forget_before(self._pending[0][0] if self._pending
                                  else self._last_image_ns or 0)
        return outcome

    def _check_order(self, kind: str, stamp_ns: int, last_ns: Optional[int]) -> str:
        if last_ns is None or stamp_ns > last_ns:
            return ''
        if stamp_ns == last_ns:
            return self._tally.reject(f'{kind}_duplicate_stamp', f'{kind} refused: stamp '
                                      f'{stamp_name(stamp_ns)} repeats the previous {kind} '
                                      'stamp')
        return self._tally.reject(f'{kind}_out_of_order', f'{kind} refused: stamp '
                                  f'{stamp_name(stamp_ns)} is {ms_text(last_ns - stamp_ns)} '
                                  f'older than the previous {kind} ({stamp_name(last_ns)}); '
                                  f'{kind}s must arrive in stamp order (a looping bag or a '
                                  'clock jump?)')


def _checked_K(K: npt.ArrayLike) -> npt.NDArray[np.float64]:
    K = np.asarray(K, dtype=np.float64)
    geometry.check_shape(K, (3, 3), 'K')
    if not (np.all(np.isfinite(K)) and K[0, 0] > 0 and K[1, 1] > 0
            and np.allclose(K[2], [0.0, 0.0, 1.0])):
        raise ValueError(f'K must be finite with fx, fy > 0 and last row [0, 0, 1], got '
                         f'{K.tolist()} (is camera_info filled in?)')
    return K
