"""Common base of the dataset readers: a lazy, indexable sequence of Frames.

Frames the readers give are `LazyFrame`s: name, K, pose and image size are read when a frame
is loaded (the size from the image file's header, which is checked then), the pixels each
time `frame.image` is used and nobody holds them any more. So a list of all the frames of a
scene (what `ace-ros map` hands the mapper) costs a few hundred bytes a frame, not a decoded
image: memory no longer grows with the scene's frame count (issue 15).
"""

from __future__ import annotations

import abc
from collections import Counter
import functools
from collections.abc import Sequence
import logging
import operator
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, overload
import weakref

import cv2
import numpy as np
import numpy.typing as npt

from ace_ros.core.geometry import FILE_POSE_TOLERANCE, check_rigid_pose
from ace_ros.core.types import Frame

_logger = logging.getLogger(__name__)

_EXIF_ORIENTATION = 0x0112


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


class LazyFrame(Frame):
    """A Frame whose image is decoded on access instead of held.

    `image` calls `load()` when no decoded copy is alive: while some caller holds the array
    (a weak reference finds it), repeated accesses return that same array; once all drop it,
    the memory is freed and the next access decodes again. `width` and `height` are known
    without decoding (given by the reader, e.g. from the file header), and each decoded image
    is checked against them. Everything else is a plain Frame (same checks of K and pose).

    Args:
        name, K, world_from_cam, stamp: as for Frame.
        load: returns the (H, W, 3) uint8 RGB image (rectified, as Frame.image).
        width, height: the size `load` gives.
        where: what the image is read from (a file path), named in errors.
        image: an image already decoded (e.g. while checking it), kept while alive.
    """

    def __init__(self, name: str, load: Callable[[], npt.NDArray[np.uint8]], width: int,
                 height: int, K: npt.ArrayLike,
                 world_from_cam: Optional[npt.ArrayLike] = None, stamp: float = 0.0,
                 where: str = '', image: Optional[npt.NDArray[np.uint8]] = None) -> None:
        # Not the dataclass __init__: it would assign `image`, which is computed here.
        self.name = name
        self.K = K  # type: ignore[assignment]  # checked and converted below
        self.world_from_cam = world_from_cam  # type: ignore[assignment]
        self.stamp = float(stamp)
        self._load_image = load
        self._size = (int(width), int(height))
        self._where = where or f'frame {name}'
        self._cached: Optional[weakref.ref] = None
        if self._size[0] < 1 or self._size[1] < 1:
            raise ValueError(f'{self._where}: image size must be positive, got '
                             f'{self._size[0]}x{self._size[1]}')
        self._check_geometry()
        if image is not None:
            self._remember(image)

    @property  # type: ignore[override]
    def image(self) -> npt.NDArray[np.uint8]:
        image = self._cached() if self._cached is not None else None
        if image is None:
            image = self._load_image()
            self._remember(image)
        return image

    def _remember(self, image: npt.NDArray[np.uint8]) -> None:
        width, height = self._size
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f'{self._where}: image must be (H, W, 3) uint8 RGB, got '
                             f'{image.shape} {image.dtype}')
        if image.shape[:2] != (height, width):
            raise ValueError(f'{self._where}: decoded image is {image.shape[1]}x'
                             f'{image.shape[0]}, but it was {width}x{height} when the frame '
                             f'was opened')
        self._cached = weakref.ref(image)

    @property
    def height(self) -> int:
        return self._size[1]

    @property
    def width(self) -> int:
        return self._size[0]

    def __repr__(self) -> str:
        return (f'LazyFrame(name={self.name!r}, {self.width}x{self.height}, '
                f'posed={self.world_from_cam is not None}, where={self._where!r})')


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


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) that `load_rgb(path)` will give, read cheaply from the file's header.

    The early check of an image file that is decoded later (`LazyFrame`): Pillow reads the
    header only (~0.05 ms, against ~8 ms to decode a 640x480 PNG); a PNG also has every
    chunk's checksum verified (~0.6 ms), which catches truncated and corrupted files. JPEGs
    rotated by their EXIF orientation (OpenCV applies it) report the rotated size. A format
    Pillow does not know is decoded with OpenCV once instead.

    Raises:
        ValueError: naming the file, if it is missing, unreadable or not an image.
    """
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as image:
            width, height = image.size
            # Orientations 5-8 turn the image by 90 degrees.
            if image.format == 'JPEG' and image.getexif().get(_EXIF_ORIENTATION, 1) >= 5:
                width, height = height, width
            if image.format == 'PNG':
                image.verify()  # chunk CRCs and completeness; decodes nothing
    except FileNotFoundError:
        raise ValueError(f'cannot read image {path}: missing') from None
    except UnidentifiedImageError:
        decoded = load_rgb(path)  # not a Pillow format: maybe one of OpenCV's
        return int(decoded.shape[1]), int(decoded.shape[0])
    except Exception as exc:  # Pillow raises many kinds (OSError, SyntaxError, ...)
        raise ValueError(f'cannot read image {path}: {type(exc).__name__}: {exc}') from exc
    return int(width), int(height)


def lazy_image_frame(path: str | Path, name: str, K: npt.ArrayLike,
                     world_from_cam: Optional[npt.ArrayLike] = None, stamp: float = 0.0,
                     rectify: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                     size: Optional[tuple[int, int]] = None) -> LazyFrame:
    """A LazyFrame decoding the image file `path` (then `rectify`, if given) on access.

    `size` is (width, height) from `image_size(path)` when the caller read it already.
    """
    width, height = image_size(path) if size is None else size
    load = _load_rgb if rectify is None else _load_rectified
    return LazyFrame(name, functools.partial(load, str(path), rectify), width, height, K,
                     world_from_cam, stamp, where=str(path))


def _load_rgb(path: str, _: None) -> npt.NDArray[np.uint8]:
    return load_rgb(path)


def _load_rectified(path: str, rectify: Callable[[np.ndarray], np.ndarray]
                    ) -> npt.NDArray[np.uint8]:
    return rectify(load_rgb(path))


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
