"""Reader and writer of the ACE / DSAC* dataset layout.

A scene folder holds `rgb/`, `poses/` and `calibration/`, either directly (a *flat* scene)
or under `train/` and `test/` split folders::

    <scene>/[<split>/]rgb/<id>[.color].png|.jpg|.jpeg     colour image
    <scene>/[<split>/]poses/<id>[.pose].txt               4x4 camera-to-world matrix
    <scene>/[<split>/]calibration/<id>[.calibration].txt  focal length (1 number) or 3x3 K

Files are matched by id: the file stem less one of ID_SUFFIXES, so both the bare names this
module writes (`f000.png`, `f000.txt`) and those of ACE's dataset setup scripts
(`frame-000000.color.png`, `frame-000000.pose.txt`, `frame-000000.calibration.txt`) pair up.
Frames are named by their id. `poses/` may be absent (frames without poses); `depth/`, and
depth images (`<id>.depth.png`) in `rgb/`, are ignored.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Optional

import cv2
import numpy as np
import numpy.typing as npt

from ace_ros.core.geometry import intrinsics_from_focal
from ace_ros.core.types import Frame
from ace_ros.data.base import (FrameSource, image_size, lazy_image_frame, read_numbers,
                               read_pose_file)

_logger = logging.getLogger(__name__)

RGB_EXTENSIONS = ('.png', '.jpg', '.jpeg')
SPLITS = ('train', 'test')
LAYOUT_DIRS = ('rgb', 'poses', 'calibration')
#: Stem suffixes dropped to get a file's id (ACE's setup scripts name files like this).
ID_SUFFIXES = ('.color', '.pose', '.calibration', '.depth')


def is_ace_scene(path: str | Path) -> bool:
    """Whether `path` directly holds `rgb/` and `calibration/` folders (a flat ACE scene)."""
    path = Path(path)
    return (path / 'rgb').is_dir() and (path / 'calibration').is_dir()


def ace_splits(path: str | Path) -> list[str]:
    """The split folders ('test', 'train') under `path` that are ACE scenes, sorted."""
    return [s for s in SPLITS if is_ace_scene(Path(path) / s)]


class AceLayoutSource(FrameSource):
    """Frames of one ACE-layout folder, i.e. the folder holding rgb/, poses/, calibration/.

    Poses and calibrations are read and checked when the source is opened; a frame's image
    file is checked (`image_size`: header, PNG checksums) when the frame is loaded and
    decoded each time its image is used (`LazyFrame`).

    Args:
        root: a flat scene, or one split folder of a scene (e.g. `<scene>/train`).

    Raises:
        ValueError: if a folder is missing, the file ids of rgb/, poses/ and calibration/
            differ (the message names the unmatched ids), or a pose or calibration file is
            malformed.
    """

    def __init__(self, root: str | Path) -> None:
        root = Path(root)
        if not is_ace_scene(root):
            raise ValueError(f'{root}: not an ACE-layout folder; expected rgb/ and calibration/ '
                             f'(and usually poses/) inside it')
        self._rgb_paths = _rgb_files(root / 'rgb')
        names = list(self._rgb_paths)
        has_poses = (root / 'poses').is_dir()
        super().__init__(root, names, has_poses)

        calibration = _text_files(root / 'calibration')
        _check_same_names(root, names, list(calibration), 'calibration')
        self._calibration = [_read_calibration(calibration[n]) for n in names]
        self._poses: list[Optional[npt.NDArray[np.float64]]] = [None] * len(names)
        if has_poses:
            poses = _text_files(root / 'poses')
            _check_same_names(root, names, list(poses), 'pose')
            self._poses = [read_pose_file(poses[n]) for n in names]
        _logger.debug('opened %s: %d frames, poses: %s', root, len(names), has_poses)

    def _load(self, index: int) -> Frame:
        name = self.names[index]
        path = self._rgb_paths[name]
        width, height = image_size(path)
        calibration = self._calibration[index]
        if calibration.shape == (3, 3):
            K = calibration
        else:
            K = intrinsics_from_focal(float(calibration[0]), width, height)
        pose = self._poses[index]
        return lazy_image_frame(path, name, K.copy(), None if pose is None else pose.copy(),
                                size=(width, height))


def write_ace_scene(out_dir: str | Path, frames: Iterable[Frame],
                    split: Optional[str] = None) -> Path:
    """Write frames in ACE layout: PNG images, 4x4 poses and 3x3 K as text (`%.9f`).

    Args:
        out_dir: the scene folder; created if needed.
        frames: frames to write. Either all or none must have a pose; with none, no
            poses/ folder is written.
        split: 'train' or 'test' to write under `out_dir/<split>/`, or None for a flat scene.

    Returns:
        The folder holding rgb/, poses/ and calibration/ (open it with AceLayoutSource).

    Raises:
        ValueError: for a bad split, bad or duplicate frame names, or mixed posed and
            unposed frames.
        FileExistsError: if the target rgb/ folder already holds files.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS} or None, got {split!r}')
    target = Path(out_dir) if split is None else Path(out_dir) / split
    if (target / 'rgb').is_dir() and any((target / 'rgb').iterdir()):
        raise FileExistsError(f'{target / "rgb"} already holds files; write to an empty folder')
    # Streams: a long synthetic sequence never has to sit in memory at once.
    seen: set = set()
    posed: Optional[bool] = None
    for frame in frames:
        name = frame.name
        if not name or '/' in name or '\\' in name or name in ('.', '..'):
            raise ValueError(f'frame names must be usable as file names, got {name!r}')
        if name in seen:
            raise ValueError(f'frame names must be unique, got {name!r} twice')
        seen.add(name)
        if posed is None:
            posed = frame.world_from_cam is not None
            for sub in (LAYOUT_DIRS if posed else ('rgb', 'calibration')):
                (target / sub).mkdir(parents=True, exist_ok=True)
        elif posed != (frame.world_from_cam is not None):
            raise ValueError(f'either all or no frames must have a pose; frame {name!r} '
                             'differs from the first frame')
        image_path = target / 'rgb' / f'{name}.png'
        if not cv2.imwrite(str(image_path), cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR)):
            raise ValueError(f'cannot write image {image_path}')
        np.savetxt(target / 'calibration' / f'{name}.txt', frame.K, fmt='%.9f')
        if posed:
            np.savetxt(target / 'poses' / f'{name}.txt', frame.world_from_cam, fmt='%.9f')
    if posed is None:
        for sub in ('rgb', 'calibration'):
            (target / sub).mkdir(parents=True, exist_ok=True)
    _logger.info('wrote %d frames in ACE layout to %s', len(seen), target)
    return target


def file_id(path: Path) -> str:
    """A layout file's id: its stem less one of ID_SUFFIXES ('frame-0.color.png' -> 'frame-0')."""
    stem = path.stem
    for suffix in ID_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[:-len(suffix)]
    return stem


def _rgb_files(folder: Path) -> dict[str, Path]:
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in RGB_EXTENSIONS)
    # Depth maps share the colour image's id; a colour-only reader skips them.
    by_id = _by_id(folder, (p for p in files if not p.stem.endswith('.depth')), 'images')
    if not by_id:
        raise ValueError(f'{folder}: no images; expected files ending in {RGB_EXTENSIONS}')
    return dict(sorted(by_id.items()))


def _text_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise ValueError(f'{folder}: folder missing')
    return _by_id(folder, (p for p in sorted(folder.glob('*.txt')) if p.is_file()), 'files')


def _by_id(folder: Path, paths: Iterable[Path], what: str) -> dict[str, Path]:
    """`paths` by their id (`file_id`); two with one id are an error naming both."""
    by_id: dict[str, Path] = {}
    for path in paths:
        key = file_id(path)
        if key in by_id:
            raise ValueError(f'{folder}: two {what} with id {key!r}: '
                             f'{by_id[key].name} and {path.name}')
        by_id[key] = path
    return by_id


def _check_same_names(root: Path, rgb_names: list[str], other_names: list[str],
                      kind: str) -> None:
    if set(rgb_names) == set(other_names):
        return
    missing = sorted(set(rgb_names) - set(other_names))
    extra = sorted(set(other_names) - set(rgb_names))
    raise ValueError(f'{root}: {len(rgb_names)} images but {len(other_names)} {kind} files; '
                     f'ids of images without a {kind} file: {missing[:5]}, of {kind} files '
                     f'without an image: {extra[:5]} (ids are file stems less {ID_SUFFIXES})')


def _read_calibration(path: Path) -> npt.NDArray[np.float64]:
    """(1,) focal length or (3, 3) K, checked."""
    values = read_numbers(path)
    if values.size == 1:
        if not np.isfinite(values[0]) or values[0] <= 0:
            raise ValueError(f'{path}: focal length must be finite and > 0, got {values[0]}')
        return values
    if values.size != 9:
        raise ValueError(f'{path}: expected 1 number (focal length) or 9 (3x3 K), got '
                         f'{values.size}')
    K = values.reshape(3, 3)
    valid = np.all(np.isfinite(K)) and K[0, 0] > 0 and K[1, 1] > 0 and K[1, 0] == 0
    if not valid or not np.allclose(K[2], [0.0, 0.0, 1.0]):
        raise ValueError(f'{path}: K must be finite, upper triangular with fx, fy > 0 and last '
                         f'row [0, 0, 1], got {K.tolist()}')
    return K
