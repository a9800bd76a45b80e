"""Transforms recorded from /tf and /tf_static, looked up through frame chains offline.

A small, ROS-free stand-in for a tf2 buffer that holds a whole recording: every child frame
has one parent; static edges hold at all times, dynamic edges are interpolated (linear
translation, slerp rotation) between the two samples bracketing the query time, as
`tum.interpolate_trajectory` does for ground truth. Like tf2, a lookup outside an edge's
samples fails (None) rather than extrapolating.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import numpy as np
import numpy.typing as npt

from ace_ros.core.geometry import invert_pose
from ace_ros.data.tum import interpolate_trajectory

_logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]


class TfTree:
    """A frame tree built from recorded transforms; `lookup` answers `target_from_source`."""

    def __init__(self) -> None:
        self._static: dict[str, tuple[str, FloatArray]] = {}
        self._samples: dict[str, tuple[str, list[tuple[float, FloatArray]]]] = {}
        self._histories: dict[str, tuple[FloatArray, list[FloatArray]]] = {}

    def add(self, parent: str, child: str, stamp: float, parent_from_child: FloatArray,
            static: bool) -> None:
        """Record one transform (a TransformStamped: header.frame_id = parent).

        A child re-parented later keeps its latest parent (tf2 does the same), with a warning.
        """
        parent, child = parent.lstrip('/'), child.lstrip('/')  # ROS 1 bags may use '/map'
        if static:
            self._static[child] = (parent, parent_from_child)
            return
        current = self._samples.get(child)
        if current is None or current[0] != parent:
            if current is not None:
                _logger.warning('TF frame %r changed parent from %r to %r; using the latest',
                                child, current[0], parent)
            self._samples[child] = (parent, [])
        self._samples[child][1].append((stamp, parent_from_child))
        self._histories.pop(child, None)

    @property
    def frames(self) -> list[str]:
        """Every frame named by a transform, sorted."""
        names = set(self._static) | set(self._samples)
        names |= {p for p, _ in self._static.values()} | {p for p, _ in self._samples.values()}
        return sorted(names)

    def __bool__(self) -> bool:
        return bool(self._static or self._samples)

    def lookup(self, target: str, source: str, times: Sequence[float],
               max_gap_s: float) -> list[Optional[FloatArray]]:
        """`target_from_source` (4, 4) at each of `times` (s), None where a dynamic edge of
        the chain has no bracketing samples at most `max_gap_s` apart.

        Raises:
            ValueError: if the two frames are not connected in the tree.
        """
        target, source = target.lstrip('/'), source.lstrip('/')
        up_source, up_target = self._path_to_root(source), self._path_to_root(target)
        common = next((f for f in up_source if f in up_target), None)
        if common is None:
            raise ValueError(
                f'TF has no chain between {target!r} and {source!r}: {source!r} leads to '
                f'{up_source[-1]!r}, {target!r} leads to {up_target[-1]!r}; frames in TF: '
                f'{self.frames}')
        common_from_source = self._chain(up_source[:up_source.index(common)], times, max_gap_s)
        common_from_target = self._chain(up_target[:up_target.index(common)], times, max_gap_s)
        return [None if a is None or b is None else invert_pose(b) @ a
                for a, b in zip(common_from_source, common_from_target)]

    def _parent(self, frame: str) -> Optional[str]:
        if frame in self._static:
            return self._static[frame][0]
        if frame in self._samples:
            return self._samples[frame][0]
        return None

    def _path_to_root(self, frame: str) -> list[str]:
        """[frame, its parent, ..., root]."""
        path = [frame]
        while (parent := self._parent(path[-1])) is not None:
            if parent in path:
                raise ValueError(f'TF has a cycle through {parent!r}: {path}')
            path.append(parent)
        return path

    def _chain(self, frames: list[str], times: Sequence[float],
               max_gap_s: float) -> list[Optional[FloatArray]]:
        """ancestor_from_frames[0] at `times`, composing the edges frame -> parent upwards."""
        result: list[Optional[FloatArray]] = [np.eye(4) for _ in times]
        for child in frames:
            edge = self._edge(child, times, max_gap_s)
            result = [None if r is None or e is None else e @ r for r, e in zip(result, edge)]
        return result

    def _edge(self, child: str, times: Sequence[float],
              max_gap_s: float) -> list[Optional[FloatArray]]:
        if child in self._static:
            return [self._static[child][1]] * len(times)
        if child not in self._histories:
            samples = sorted(self._samples[child][1], key=lambda s: s[0])
            stamps = np.array([s[0] for s in samples])
            # Repeated stamps: keep the last sample, as a later broadcast overrides.
            keep = np.append(stamps[1:] != stamps[:-1], True)
            self._histories[child] = (stamps[keep], [s[1] for s, k in zip(samples, keep) if k])
        stamps, poses = self._histories[child]
        return interpolate_trajectory(stamps, poses, np.asarray(times, dtype=np.float64),
                                      max_gap_s)
