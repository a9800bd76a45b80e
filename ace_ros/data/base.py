"""Common base of the dataset readers: a lazy, indexable sequence of Frames."""

from __future__ import annotations

import abc
from collections import Counter
from collections.abc import Sequence
import logging
import operator
from pathlib import Path
from typing import Iterable, Iterator, overload

import cv2
import numpy as np
import numpy.typing as npt

from ace_ros.core.geometry import FILE_POSE_TOLERANCE, check_rigid_pose
from ace_ros.core.types import Frame

_logger = logging.getLogger(__name__)


class FrameSource(Sequence[Frame], abc.ABC):
    """A read-only, indexable sequence of Frames whose images load on access.

    Subclasses call `super().__init__(root, names, has_poses)` and implement `_load(index)`
    for `0 <= index < len(self)`. Indexing with an int returns a Frame (negative indices
    count from the end); indexing with a slice returns a `Subset`.

    Attributes:
        root: folder the source was read from.
        names: frame names, unique within the source, in frame order.
        has_poses: whether the source provides ground-truth poses at all. Individual frames
            may still have `world_from_cam=None` (e.g. TUM frames outside the ground truth).
    """

    def __init__(self, root: str | Path, names: Sequence[str], has_poses: bool) -> None:
        self.root = Path(root)
        self.names = list(names)
        self.has_poses = bool(has_poses)
        if len(set(self.names)) != len(self.names):
            duplicates = sorted(n for n, c in Counter(self.names).items() if c > 1)
            raise ValueError(f'{self.root}: frame names must be unique, got duplicates '
                             f'{duplicates[:5]}')

    @abc.abstractmethod
    def _load(self, index: int) -> Frame:
        """Load frame `index`, already range-checked and non-negative."""

    def __len__(self) -> int:
        return len(self.names)

    @overload
    def __getitem__(self, index: int) -> Frame:
        ...

    @overload
    def __getitem__(self, index: slice) -> Subset:
        ...

    def __getitem__(self, index: int | slice) -> Frame | Subset:
        if isinstance(index, slice):
            return Subset(self, range(len(self))[index])
        return self._load(_normalise_index(index, len(self), self.root))

    def __iter__(self) -> Iterator[Frame]:
        for i in range(len(self)):
            yield self._load(i)

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(root={str(self.root)!r}, frames={len(self)}, '
                f'has_poses={self.has_poses})')


class Subset(FrameSource):
    """The frames of `source` at `indices`, in the order given, as a FrameSource.

    Args:
        source: the source to select from.
        indices: indices into `source`; negative values count from the end.

    Raises:
        IndexError: if an index is out of range for `source`.
    """

    def __init__(self, source: FrameSource, indices: Iterable[int]) -> None:
        self.source = source
        self.indices = [_normalise_index(i, len(source), source.root) for i in indices]
        super().__init__(source.root, [source.names[i] for i in self.indices],
                         source.has_poses)

    def _load(self, index: int) -> Frame:
        return self.source[self.indices[index]]

    def __repr__(self) -> str:
        return f'Subset({self.source!r}, frames={len(self)})'


def block_split(n: int, block: int, parity: int) -> list[int]:
    """Indices i in [0, n) with (i // block) % 2 == parity: alternating blocks of frames.

    Used for sequence splits such as TUM's: mapping frames are parity 0, queries parity 1.

    Args:
        n: number of frames.
        block: block length in frames, >= 1.
        parity: 0 for the even blocks (the first block included), 1 for the odd ones.

    Returns:
        The selected indices, ascending.

    >>> block_split(7, 2, 0)
    [0, 1, 4, 5]
    """
    if n < 0:
        raise ValueError(f'n must be >= 0, got {n}')
    if block < 1:
        raise ValueError(f'block must be >= 1, got {block}')
    if parity not in (0, 1):
        raise ValueError(f'parity must be 0 or 1, got {parity}')
    return [i for i in range(n) if (i // block) % 2 == parity]


class Undistorter:
    """Removes lens distortion keeping the same K (OpenCV models), caching maps per size.

    Args:
        K: (3, 3) intrinsics of the distorted image; also those of the undistorted one.
        dist_coeffs: OpenCV distortion coefficients: k1 k2 p1 p2 [k3 [k4 k5 k6 ...]], or
            k1 k2 k3 k4 with `fisheye`.
        fisheye: the image follows OpenCV's fisheye model (`cv2.fisheye`: equidistant
            projection, theta_d = theta (1 + k1 theta^2 + ... + k4 theta^8)).
    """

    def __init__(self, K: npt.ArrayLike, dist_coeffs: npt.ArrayLike,
                 fisheye: bool = False) -> None:
        self.K = np.array(K, dtype=np.float64)
        self.dist_coeffs = np.array(dist_coeffs, dtype=np.float64).reshape(-1)
        self.fisheye = bool(fisheye)
        if self.fisheye and self.dist_coeffs.size != 4:
            raise ValueError(f'fisheye distortion takes 4 coefficients (k1 k2 k3 k4), got '
                             f'{self.dist_coeffs.size}')
        self._maps: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    @property
    def distorted(self) -> bool:
        """Whether `__call__` changes images (fisheye, or some coefficient is non-zero)."""
        return self.fisheye or bool(np.any(self.dist_coeffs != 0))

    def maps(self, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """OpenCV remap maps for images of this size (built once per size, then cached)."""
        if (width, height) not in self._maps:
            # The new camera matrix is K itself, so the undistorted image keeps K.
            if self.fisheye:
                maps = cv2.fisheye.initUndistortRectifyMap(
                    self.K, self.dist_coeffs, np.eye(3), self.K, (width, height), cv2.CV_16SC2)
            else:
                maps = cv2.initUndistortRectifyMap(
                    self.K, self.dist_coeffs, None, self.K, (width, height), cv2.CV_16SC2)
            self._maps[(width, height)] = maps
        return self._maps[(width, height)]

    def __call__(self, image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        """(H, W, C) image -> the same image undistorted (returned as is when undistorted)."""
        if not self.distorted:
            return image
        height, width = image.shape[:2]
        map_x, map_y = self.maps(width, height)
        return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR)


def load_rgb(path: str | Path) -> npt.NDArray[np.uint8]:
    """Read an image file as (H, W, 3) uint8 RGB (grey images are expanded to 3 channels).

    Raises:
        ValueError: if the file is missing or cannot be decoded.
    """
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f'cannot read image {path}: missing, unreadable or not an image')
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_numbers(path: str | Path) -> npt.NDArray[np.float64]:
    """All whitespace-separated numbers of a small text file, flattened, as float64.

    Raises:
        ValueError: if the file cannot be read or holds something that is not a number.
    """
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ValueError(f'cannot read {path}: {exc}') from exc
    try:
        return np.array(text.split(), dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f'{path}: expected only numbers, got {text[:80]!r}') from exc


def read_pose_file(path: str | Path) -> npt.NDArray[np.float64]:
    """Read and check a text file holding a 4x4 camera-to-world matrix (16 numbers)."""
    values = read_numbers(path)
    if values.size != 16:
        raise ValueError(f'{path}: expected 16 numbers (a 4x4 pose), got {values.size}')
    pose = values.reshape(4, 4)
    check_rigid_pose(pose, str(path), FILE_POSE_TOLERANCE)
    return pose


def _normalise_index(index: int, length: int, root: Path) -> int:
    index = operator.index(index)
    if not -length <= index < length:
        raise IndexError(f'{root}: frame index {index} out of range for {length} frames')
    return index + length if index < 0 else index
