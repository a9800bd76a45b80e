"""Which posed frames of a live drive become keyframes (the online mapping session's policy).

ACE trains on every frame, so nearly every posed image is a keyframe: only near-duplicates
(less than min_translation_m and min_rotation_deg of motion since the previous frame that
moved enough, e.g. a robot standing still) are skipped. `max_keyframes` bounds memory: when
one more keyframe would exceed it, every second keyframe is dropped and from then on only
every second frame that moves enough is kept (the spacing doubles each time), so the
keyframes cover the whole drive at one uniform density, between max_keyframes / 2 and
max_keyframes of them.

Frames that moved enough ("candidates") are numbered; candidate c is a keyframe while
c % spacing == 0, so thinning keeps exactly the keyframes on the doubled lattice.

`finish_at_max_keyframes` restores the old policy: keyframes stop at max_keyframes (the
mapping node then trains).

The policy decides, remembers and counts its outcomes; the session queues the keyframes for
encoding, and re-queues the kept ones after a thinning (see online_worker.py). Not
thread-safe: the session calls it under its lock.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Optional, Tuple

import numpy as np
import numpy.typing as npt

from ace_ros.core import geometry
from ace_ros.core.types import Frame

# The session's logger: the node and the tests follow the session's messages by its name.
_logger = logging.getLogger('ace_ros.core.online_mapping')


class KeyframePolicy:
    """The keyframes kept so far, and whether the next posed frame joins them.

    Args:
        min_translation_m, min_rotation_deg: a frame that moved less than both since the last
            candidate is a near-duplicate.
        max_keyframes: keyframes held at most; one more thins them, or is refused with
            `finish_at_max_keyframes`.
        counts: the session's counters, of which the policy keeps 'keyframes',
            'skipped_small_motion', 'skipped_spacing', 'keyframes_thinned' and
            'keyframe_limit'.
    """

    def __init__(self, min_translation_m: float, min_rotation_deg: float,
                 max_keyframes: int, finish_at_max_keyframes: bool,
                 counts: Dict[str, int]) -> None:
        self.min_translation_m = min_translation_m
        self.min_rotation_deg = min_rotation_deg
        self.max_keyframes = max_keyframes
        self.finish_at_max_keyframes = finish_at_max_keyframes
        self.counts = counts
        #: the keyframes, in arrival order (replaced, never edited in place, when some go)
        self.keyframes: List[Frame] = []
        #: keyframes are every `spacing`-th candidate (1 until thinned)
        self.spacing = 1
        self._candidates = 0
        self._last_candidate_pose: Optional[npt.NDArray[np.float64]] = None
        self._candidate_index: Dict[str, int] = {}  # keyframe name -> its candidate number

    @property
    def full(self) -> bool:
        """Whether max_keyframes keyframes are held."""
        return len(self.keyframes) >= self.max_keyframes

    def consider(self, frame: Frame) -> Tuple[str, Optional[List[Frame]]]:
        """Decide on a posed frame: its outcome ('keyframe', 'skipped_small_motion',
        'skipped_spacing' or 'keyframe_limit'), and the keyframes kept when it thinned them
        first (to re-encode before `frame`), else None."""
        if self.finish_at_max_keyframes and self.full:
            self.counts['keyframe_limit'] += 1
            return 'keyframe_limit', None
        if self._last_candidate_pose is not None:
            moved_m, turned_deg = geometry.pose_error(frame.world_from_cam,
                                                      self._last_candidate_pose)
            if moved_m < self.min_translation_m and turned_deg < self.min_rotation_deg:
                self.counts['skipped_small_motion'] += 1
                return 'skipped_small_motion', None
        index = self._candidates
        self._candidates += 1
        self._last_candidate_pose = frame.world_from_cam
        kept = self._thin() if index % self.spacing == 0 and self.full else None
        if index % self.spacing:
            self.counts['skipped_spacing'] += 1
            return 'skipped_spacing', kept
        self.keyframes.append(frame)
        self._candidate_index[frame.name] = index
        self.counts['keyframes'] += 1
        if self.finish_at_max_keyframes and self.full:
            _logger.info('keyframe limit reached (%d); collection is complete',
                         self.max_keyframes)
        return 'keyframe', kept

    def _thin(self) -> List[Frame]:
        """Drop every second keyframe (on the candidate lattice), double the spacing; returns
        (a copy of) the keyframes kept."""
        before = len(self.keyframes)
        self.spacing *= 2
        kept = [f for f in self.keyframes
                if self._candidate_index[f.name] % self.spacing == 0]
        self.keyframes = kept
        self._candidate_index = {f.name: self._candidate_index[f.name] for f in kept}
        self.counts['keyframes'] -= before - len(kept)
        self.counts['keyframes_thinned'] += before - len(kept)
        _logger.info('max_keyframes (%d) reached: thinned the keyframes evenly, %d of %d kept; '
                     'from now on every %d%s frame that moves enough is a keyframe, so the whole '
                     'drive stays covered at one density; re-encoding the %d kept into a fresh '
                     'buffer', self.max_keyframes, len(kept), before, self.spacing,
                     _ordinal_suffix(self.spacing), len(kept))
        return list(kept)  # `keyframes` grows on; the re-encoding wants these only

    def drop(self, frame: Frame) -> None:
        """Forget keyframe `frame` (its encoding failed)."""
        self.keyframes = [f for f in self.keyframes if f is not frame]
        self._candidate_index.pop(frame.name, None)
        self.counts['keyframes'] -= 1


def _ordinal_suffix(n: int) -> str:
    return 'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')
