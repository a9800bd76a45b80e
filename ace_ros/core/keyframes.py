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

The policy only decides and remembers; the session counts the outcomes and has the kept
keyframes re-encoded after a thinning (see online_worker.py). Not thread-safe: the session
calls it under its lock.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Optional

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
        max_keyframes: keyframes held at most; one more thins them.
    """

    def __init__(self, min_translation_m: float, min_rotation_deg: float,
                 max_keyframes: int) -> None:
        self.min_translation_m = min_translation_m
        self.min_rotation_deg = min_rotation_deg
        self.max_keyframes = max_keyframes
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

    def candidate(self, frame: Frame) -> Optional[int]:
        """Number `frame` (posed) as the next candidate; None for a near-duplicate."""
        if self._last_candidate_pose is not None:
            moved_m, turned_deg = geometry.pose_error(frame.world_from_cam,
                                                      self._last_candidate_pose)
            if moved_m < self.min_translation_m and turned_deg < self.min_rotation_deg:
                return None
        index = self._candidates
        self._candidates += 1
        self._last_candidate_pose = frame.world_from_cam
        return index

    def must_thin(self, index: int) -> bool:
        """Whether candidate `index` would be one keyframe too many (`thin` first)."""
        return index % self.spacing == 0 and self.full

    def accept(self, frame: Frame, index: int) -> bool:
        """Keep candidate `index` as a keyframe if it is on the lattice; whether it was."""
        if index % self.spacing:
            return False
        self.keyframes.append(frame)
        self._candidate_index[frame.name] = index
        return True

    def thin(self) -> List[Frame]:
        """Drop every second keyframe (on the candidate lattice), double the spacing; returns
        the keyframes kept."""
        before = len(self.keyframes)
        self.spacing *= 2
        kept = [f for f in self.keyframes
                if self._candidate_index[f.name] % self.spacing == 0]
        self.keyframes = kept
        self._candidate_index = {f.name: self._candidate_index[f.name] for f in kept}
        _logger.info('max_keyframes (%d) reached: thinned the keyframes evenly, %d of %d kept; '
                     'from now on every %d%s frame that moves enough is a keyframe, so the whole '
                     'drive stays covered at one density; re-encoding the %d kept into a fresh '
                     'buffer', self.max_keyframes, len(kept), before, self.spacing,
                     _ordinal_suffix(self.spacing), len(kept))
        return kept

    def drop(self, frame: Frame) -> None:
        """Forget keyframe `frame` (its encoding failed)."""
        self.keyframes = [f for f in self.keyframes if f is not frame]
        self._candidate_index.pop(frame.name, None)


def _ordinal_suffix(n: int) -> str:
    return 'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')
