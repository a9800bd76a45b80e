"""Coverage of a mapping drive: where the camera has been and which ways it looked.

ROS-free. `Coverage.add(world_from_cam)` takes each keyframe's camera pose; the camera
centre falls in a voxel (`voxel_size_m`, 0.25 m by default) and its viewing direction (the
optical axis, camera +z, in the world) in one of `directions` bins, the cells of a
Fibonacci sphere (20 by default: ~40 degrees apart, no "up" axis assumed, so any world
frame convention works). A (voxel, direction) pair is a view cell. `summary()` tells an
operator how much of the space has been seen and whether driving still adds anything: the
view cells new in the last `recent_keyframes` keyframes; none (fewer than
`saturated_below`) means coverage is saturating, and more driving of the same kind adds
nothing to the map.

A camera held level and turned a full circle reaches about half the bins (10 of 20: the
others look up or down), so a direction share of 0.5 is "seen all round"; `voxel_cloud`'s
colours saturate there.

Each `add` costs O(directions) (the nearest bin), independent of the keyframes so far.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
import math
from typing import Deque, Dict, Optional, Tuple

import numpy as np
import numpy.typing as npt

__all__ = ['Coverage', 'CoverageSummary', 'fibonacci_directions']

#: Direction share at which a voxel's colour is fully green (a level camera's full turn).
FULL_SHARE = 0.5

Voxel = Tuple[int, int, int]


def fibonacci_directions(n: int) -> npt.NDArray[np.float64]:
    """(n, 3) unit vectors spread evenly over the sphere (a Fibonacci lattice).

    >>> d = fibonacci_directions(20)
    >>> d.shape, bool(np.allclose(np.linalg.norm(d, axis=1), 1.0))
    ((20, 3), True)
    """
    if n < 1:
        raise ValueError(f'directions must be >= 1, got {n}')
    i = np.arange(n, dtype=np.float64)
    z = 1.0 - 2.0 * (i + 0.5) / n
    r = np.sqrt(np.maximum(0.0, 1.0 - z * z))
    phi = math.pi * (3.0 - math.sqrt(5.0)) * i
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


@dataclass(frozen=True)
class CoverageSummary:
    """How much of the space a drive has seen (see the module docstring)."""

    keyframes: int          # poses added
    voxels: int             # voxels the camera centre visited
    view_cells: int         # (voxel, direction) cells seen
    direction_share: float  # view_cells / (voxels * directions): 0 before the first pose
    path_length_m: float    # camera centre path, summed over consecutive poses
    new_recent: int         # view cells first seen in the last `recent_keyframes` poses
    recent_keyframes: int   # the window of new_recent (poses so far, when fewer)
    saturating: bool        # a full window added fewer than `saturated_below` cells


class Coverage:
    """Voxels visited by camera centres, crossed with binned viewing directions.

    Args:
        voxel_size_m: edge of the voxels camera centres fall in (m).
        directions: viewing-direction bins (a Fibonacci sphere).
        recent_keyframes: the window of `CoverageSummary.new_recent`.
        saturated_below: a full window that added fewer new view cells is saturating.

    Raises:
        ValueError: for a non-positive size, bin count or window.
    """

    def __init__(self, voxel_size_m: float = 0.25, directions: int = 20,
                 recent_keyframes: int = 30, saturated_below: int = 1) -> None:
        if not (math.isfinite(voxel_size_m) and voxel_size_m > 0):
            raise ValueError(f'voxel_size_m must be finite and > 0, got {voxel_size_m!r}')
        if recent_keyframes < 1:
            raise ValueError(f'recent_keyframes must be >= 1, got {recent_keyframes}')
        self.voxel_size_m = float(voxel_size_m)
        self.directions = fibonacci_directions(directions)
        self.recent_keyframes = recent_keyframes
        self.saturated_below = saturated_below
        self._seen: Dict[Voxel, int] = {}  # voxel -> bit mask of the direction bins seen
        self._view_cells = 0
        self._keyframes = 0
        self._path_m = 0.0
        self._last_centre: Optional[npt.NDArray[np.float64]] = None
        self._recent: Deque[int] = collections.deque(maxlen=recent_keyframes)
        self._recent_sum = 0

    def add(self, world_from_cam: npt.ArrayLike) -> int:
        """Add one (4, 4) camera pose (OpenCV camera axes: +z is the optical axis).

        Returns:
            The view cells it saw first (0 or 1).

        Raises:
            ValueError: for a pose that is not a finite (4, 4) matrix.
        """
        pose = np.asarray(world_from_cam, dtype=np.float64)
        if pose.shape != (4, 4) or not np.isfinite(pose).all():
            raise ValueError(f'world_from_cam must be a finite (4, 4) matrix, got shape '
                             f'{pose.shape}')
        centre = pose[:3, 3].copy()
        forward = pose[:3, 2]
        voxel = tuple(int(v) for v in np.floor(centre / self.voxel_size_m))
        bit = 1 << int(np.argmax(self.directions @ forward))
        mask = self._seen.get(voxel, 0)
        new = 0 if mask & bit else 1
        self._seen[voxel] = mask | bit
        self._view_cells += new
        if self._last_centre is not None:
            self._path_m += float(np.linalg.norm(centre - self._last_centre))
        self._last_centre = centre
        self._keyframes += 1
        if len(self._recent) == self._recent.maxlen:
            self._recent_sum -= self._recent[0]
        self._recent.append(new)
        self._recent_sum += new
        return new

    def summary(self) -> CoverageSummary:
        voxels = len(self._seen)
        share = self._view_cells / (voxels * len(self.directions)) if voxels else 0.0
        full_window = len(self._recent) == self.recent_keyframes
        return CoverageSummary(self._keyframes, voxels, self._view_cells, share, self._path_m,
                               self._recent_sum, len(self._recent),
                               full_window and self._recent_sum < self.saturated_below)

    def voxel_cloud(self) -> Tuple[npt.NDArray[np.float64], npt.NDArray[np.float64],
                                   npt.NDArray[np.uint8]]:
        """The visited voxels, for display.

        Returns:
            centres (N, 3) in the world frame (m), direction shares (N,) in [0, 1] (the
            share of direction bins seen from each voxel), and colours (N, 3) uint8 RGB from
            red (one direction) through yellow to green (a share of `FULL_SHARE` or more).
        """
        n = len(self._seen)
        keys = np.array(list(self._seen.keys()), dtype=np.float64).reshape(n, 3)
        centres = (keys + 0.5) * self.voxel_size_m
        counts = np.array([bin(mask).count('1') for mask in self._seen.values()],
                          dtype=np.float64)
        shares = counts / len(self.directions)
        return centres, shares, share_colors(shares)


def share_colors(shares: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """(N,) direction shares -> (N, 3) uint8 RGB: red at 0, yellow at FULL_SHARE / 2,
    green at FULL_SHARE and above.

    >>> share_colors([0.0, 0.25, 1.0]).tolist()
    [[255, 0, 0], [255, 255, 0], [0, 255, 0]]
    """
    t = np.clip(np.asarray(shares, dtype=np.float64) / FULL_SHARE, 0.0, 1.0)
    red = np.clip(2.0 - 2.0 * t, 0.0, 1.0)
    green = np.clip(2.0 * t, 0.0, 1.0)
    rgb = np.stack([red, green, np.zeros_like(t)], axis=-1)
    return np.round(rgb * 255.0).astype(np.uint8)
