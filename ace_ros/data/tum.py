"""Reader of TUM RGB-D sequences.

::

    <seq>/rgb.txt            `timestamp filename` per line, '#' comments; defines frame order
    <seq>/groundtruth.txt    `timestamp tx ty tz qx qy qz qw`: camera-to-world, optional
    <seq>/intrinsics.txt     `key value` lines: fx fy cx cy [width height] [d0_k1 .. d4_k3]

Ground truth is not sampled at the image stamps: a frame's pose is interpolated (linear
translation, slerp rotation) between the two ground-truth samples bracketing its stamp. A
frame outside the ground-truth span, or whose bracketing samples are more than `max_gap_s`
apart, gets `world_from_cam=None`. Distorted images are undistorted keeping the same K.
"""

from __future__ import annotations

import logging
from pathlib import Path
import re
from typing import Optional, Sequence

import numpy as np
import numpy.typing as npt

from ace_ros.core.geometry import check_shape, pose_from_translation_quaternion, slerp_pose
from ace_ros.core.types import Frame
from ace_ros.data.base import FrameSource, image_size, lazy_image_frame, Undistorter

_logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

_DISTORTION_KEY = re.compile(r'^d(\d)(_\w+)?$')
_DISTORTION_NAMES = {'k1': 0, 'k2': 1, 'p1': 2, 'p2': 3, 'k3': 4}


def is_tum_sequence(path: str | Path) -> bool:
    """Whether `path` holds a TUM `rgb.txt` list."""
    return (Path(path) / 'rgb.txt').is_file()


class TumSource(FrameSource):
    """Frames of a TUM RGB-D sequence, in rgb.txt order, named by their timestamp string.

    Args:
        root: the sequence folder.
        K: (3, 3) intrinsics; when given, intrinsics.txt is ignored and `dist_coeffs` apply.
            When None, intrinsics.txt must exist.
        dist_coeffs: OpenCV distortion coefficients (k1 k2 p1 p2 [k3 ...]) going with `K`.
        max_gap_s: largest time between the two ground-truth samples bracketing a frame
            for its pose to be interpolated.
        groundtruth: ground-truth file name inside `root`; if the file is absent the frames
            have no poses.

    Raises:
        ValueError: for malformed lists, missing intrinsics, or an image whose size differs
            from the size given in intrinsics.txt (on access).
    """

    def __init__(self, root: str | Path, K: Optional[npt.ArrayLike] = None,
                 dist_coeffs: Optional[Sequence[float]] = None, max_gap_s: float = 0.05,
                 groundtruth: str = 'groundtruth.txt') -> None:
        root = Path(root)
        if max_gap_s <= 0:
            raise ValueError(f'max_gap_s must be > 0, got {max_gap_s}')
        rgb_rows = _read_table(root / 'rgb.txt', 2)
        if not rgb_rows:
            raise ValueError(f'{root / "rgb.txt"}: lists no images')
        super().__init__(root, [row[0] for row in rgb_rows], has_poses=False)
        self.stamps = np.array([float(row[0]) for row in rgb_rows])
        self._image_paths = [root / row[1] for row in rgb_rows]

        self._size: Optional[tuple[int, int]] = None
        if K is not None:
            self.K = np.array(K, dtype=np.float64)
            check_shape(self.K, (3, 3), 'K')
            self.dist_coeffs = np.zeros(5) if dist_coeffs is None else np.array(
                dist_coeffs, dtype=np.float64)
        elif (root / 'intrinsics.txt').is_file():
            self.K, self.dist_coeffs, self._size = read_tum_intrinsics(root / 'intrinsics.txt')
        else:
            raise ValueError(f'{root}: no intrinsics.txt and no K argument; give one of them')
        self._undistort = Undistorter(self.K, self.dist_coeffs)

        self.poses: list[Optional[FloatArray]] = [None] * len(self)
        gt_path = root / groundtruth
        if gt_path.is_file():
            gt_times, gt_poses = read_tum_trajectory(gt_path)
            self.has_poses = True
            self.poses = interpolate_trajectory(gt_times, gt_poses, self.stamps, max_gap_s)
            n_none = sum(p is None for p in self.poses)
            if n_none:
                outside = int(np.sum((self.stamps < gt_times[0]) | (self.stamps > gt_times[-1])))
                _logger.warning(
                    '%s: %d of %d frames have no pose (%d outside the ground truth span '
                    '%.3f..%.3f, %d in a ground-truth gap > %.3f s)', root, n_none, len(self),
                    outside, gt_times[0], gt_times[-1], n_none - outside, max_gap_s)

    @property
    def distorted(self) -> bool:
        """Whether images are undistorted on load (non-zero distortion coefficients)."""
        return self._undistort.distorted

    def _load(self, index: int) -> Frame:
        # The file is checked now (header), decoded and undistorted when used (LazyFrame).
        path = self._image_paths[index]
        width, height = image_size(path)
        if self._size is not None and (width, height) != self._size:
            raise ValueError(f'{path}: image is {width}x{height} but '
                             f'intrinsics.txt is for {self._size[0]}x{self._size[1]}')
        pose = self.poses[index]
        return lazy_image_frame(path, self.names[index], self.K.copy(),
                                None if pose is None else pose.copy(),
                                float(self.stamps[index]),
                                self._undistort if self._undistort.distorted else None,
                                (width, height))


def read_tum_intrinsics(
        path: str | Path) -> tuple[FloatArray, FloatArray, Optional[tuple[int, int]]]:
    """Parse an intrinsics.txt of `key value` lines ('#' comments).

    Keys: fx fy cx cy (required), width height (optional, together), dN or dN_name
    (distortion coefficient N in OpenCV order, e.g. `d0_k1`) or k1 k2 p1 p2 k3. Other keys
    (e.g. depth_scale) are ignored.

    Returns:
        (3, 3) K, (5,) or longer distortion coefficients (zeros when none are given),
        and (width, height) or None.
    """
    values: dict[str, float] = {}
    for key, value in _read_table(Path(path), 2, max_columns=2):
        try:
            values[key] = float(value)
        except ValueError as exc:
            raise ValueError(f'{path}: {key} must be a number, got {value!r}') from exc
    missing = [k for k in ('fx', 'fy', 'cx', 'cy') if k not in values]
    if missing:
        raise ValueError(f'{path}: missing {missing}; expected lines `fx 517.3` etc.')
    K = np.array([[values['fx'], 0.0, values['cx']], [0.0, values['fy'], values['cy']],
                  [0.0, 0.0, 1.0]])
    dist = {}
    for key, value in values.items():
        match = _DISTORTION_KEY.match(key)
        if match:
            dist[int(match.group(1))] = value
        elif key in _DISTORTION_NAMES:
            dist[_DISTORTION_NAMES[key]] = value
    dist_coeffs = np.zeros(max(5, max(dist, default=0) + 1))
    for i, value in dist.items():
        dist_coeffs[i] = value
    size = None
    if 'width' in values or 'height' in values:
        if 'width' not in values or 'height' not in values:
            raise ValueError(f'{path}: width and height must be given together')
        size = (int(values['width']), int(values['height']))
    return K, dist_coeffs, size


def read_tum_trajectory(path: str | Path) -> tuple[FloatArray, list[FloatArray]]:
    """Read `timestamp tx ty tz qx qy qz qw` lines: (N,) stamps and N (4, 4) poses, by time."""
    rows = _read_table(Path(path), 8, max_columns=8)
    if not rows:
        raise ValueError(f'{path}: no poses')
    try:
        data = np.array(rows, dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f'{path}: expected numbers only in pose lines') from exc
    order = np.argsort(data[:, 0], kind='stable')
    if np.any(order != np.arange(len(order))):
        _logger.warning('%s: timestamps not in order; sorting them', path)
        data = data[order]
    poses = [pose_from_translation_quaternion(row[1:4], row[4:8]) for row in data]
    return data[:, 0], poses


def interpolate_trajectory(times: FloatArray, poses: Sequence[FloatArray],
                           query_times: FloatArray,
                           max_gap_s: float) -> list[Optional[FloatArray]]:
    """Poses at `query_times` interpolated between the bracketing samples of a trajectory.

    Args:
        times: (N,) ascending sample stamps, seconds.
        poses: N (4, 4) poses at `times`.
        query_times: (M,) stamps to interpolate at.
        max_gap_s: largest spacing of the two bracketing samples; wider gaps give None.

    Returns:
        M poses; None for stamps outside [times[0], times[-1]] or in a gap > max_gap_s.
        A stamp equal to a sample stamp gets that sample's pose.
    """
    result: list[Optional[FloatArray]] = []
    for t in np.asarray(query_times, dtype=np.float64):
        i1 = int(np.searchsorted(times, t, side='left'))
        if i1 < len(times) and times[i1] == t:
            result.append(np.array(poses[i1]))
        elif i1 == 0 or i1 == len(times) or times[i1] - times[i1 - 1] > max_gap_s:
            result.append(None)
        else:
            alpha = (t - times[i1 - 1]) / (times[i1] - times[i1 - 1])
            result.append(slerp_pose(poses[i1 - 1], poses[i1], float(alpha)))
    return result


def _read_table(path: Path, min_columns: int,
                max_columns: Optional[int] = None) -> list[list[str]]:
    """Whitespace-separated rows of a text file, skipping blank lines and '#' comments."""
    if not path.is_file():
        raise ValueError(f'{path}: file missing')
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.split('#', 1)[0].strip()
        if not line:
            continue
        row = line.split()
        if len(row) < min_columns or (max_columns is not None and len(row) > max_columns):
            expected = min_columns if max_columns == min_columns else f'>= {min_columns}'
            raise ValueError(f'{path}:{number}: expected {expected} columns, got {len(row)}: '
                             f'{line!r}')
        rows.append(row)
    return rows
