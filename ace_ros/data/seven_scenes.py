"""Reader of the original Microsoft 7-Scenes layout.

::

    <scene>/TrainSplit.txt, TestSplit.txt     lines like `sequence1`
    <scene>/seq-01/frame-000000.color.png     colour image (.color.jpg also accepted)
    <scene>/seq-01/frame-000000.pose.txt      4x4 camera-to-world matrix, metres

Frame names are `seq-01-frame-000000`. 7-Scenes ships no colour calibration; the nominal
f = 525, c = (320, 240) for the 640x480 colour images (used by DSAC* and ACE) is the default.
"""

from __future__ import annotations

import logging
from pathlib import Path
import re
from typing import Optional

import numpy as np
import numpy.typing as npt

from ace_ros.core.geometry import check_shape
from ace_ros.core.types import Frame
from ace_ros.data.base import FrameSource, lazy_image_frame, read_pose_file

_logger = logging.getLogger(__name__)

#: Nominal 7-Scenes colour intrinsics for 640x480 images.
SEVEN_SCENES_K = np.array([[525.0, 0.0, 320.0], [0.0, 525.0, 240.0], [0.0, 0.0, 1.0]])
SPLIT_FILES = {'train': 'TrainSplit.txt', 'test': 'TestSplit.txt'}
COLOR_SUFFIXES = ('.color.png', '.color.jpg')

_SEQUENCE_LINE = re.compile(r'^sequence(\d+)$', re.IGNORECASE)


def is_seven_scenes(path: str | Path) -> bool:
    """Whether `path` looks like a 7-Scenes scene (split files or seq-XX/frame-*.color.*)."""
    path = Path(path)
    if any((path / f).is_file() for f in SPLIT_FILES.values()):
        return True
    return any(seq.is_dir() and _color_files(seq) for seq in path.glob('seq-*'))


class SevenScenesSource(FrameSource):
    """Frames of one 7-Scenes scene, in sequence then frame order.

    Args:
        root: the scene folder (holding seq-XX/ and the split files).
        split: 'train' or 'test' to read the sequences listed in TrainSplit.txt /
            TestSplit.txt, or None for every seq-XX folder.
        K: (3, 3) intrinsics overriding the nominal SEVEN_SCENES_K.

    Raises:
        ValueError: for a bad split, a missing or malformed split file, a missing sequence
            folder or pose file, or a malformed pose.
    """

    def __init__(self, root: str | Path, split: Optional[str] = None,
                 K: Optional[npt.ArrayLike] = None) -> None:
        root = Path(root)
        self._K = SEVEN_SCENES_K.copy() if K is None else np.array(K, dtype=np.float64)
        check_shape(self._K, (3, 3), 'K')
        sequences = _sequences(root, split)
        self._image_paths: list[Path] = []
        pose_paths: list[Path] = []
        names: list[str] = []
        for seq in sequences:
            folder = root / seq
            if not folder.is_dir():
                raise ValueError(f'{root}: sequence folder {seq}/ missing (split {split!r})')
            for image_path in _color_files(folder):
                frame = _frame_stem(image_path)
                self._image_paths.append(image_path)
                pose_paths.append(folder / f'{frame}.pose.txt')
                names.append(f'{seq}-{frame}')
        if not names:
            raise ValueError(f'{root}: no frames in sequences {sequences}; expected '
                             f'seq-XX/frame-XXXXXX{COLOR_SUFFIXES[0]}')
        super().__init__(root, names, has_poses=True)
        missing = [str(p) for p in pose_paths if not p.is_file()]
        if missing:
            raise ValueError(f'{root}: {len(names)} images but {len(names) - len(missing)} '
                             f'pose files; missing e.g. {missing[:3]}')
        self._poses = [read_pose_file(p) for p in pose_paths]
        _logger.debug('opened 7-Scenes %s split=%s: %d frames in %s', root, split, len(names),
                      sequences)

    def _load(self, index: int) -> Frame:
        # Checked now (header), decoded when used (LazyFrame).
        return lazy_image_frame(self._image_paths[index], self.names[index], self._K.copy(),
                                self._poses[index].copy())


def _sequences(root: Path, split: Optional[str]) -> list[str]:
    """Sequence folder names ('seq-01', ...) of a split, or all of them for split=None."""
    if split is None:
        found = sorted(p.name for p in root.glob('seq-*') if p.is_dir())
        if not found:
            raise ValueError(f'{root}: no seq-XX folders')
        return found
    if split not in SPLIT_FILES:
        raise ValueError(f'split must be one of {tuple(SPLIT_FILES)} or None, got {split!r}')
    split_file = root / SPLIT_FILES[split]
    if not split_file.is_file():
        raise ValueError(f'{root}: split {split!r} needs {SPLIT_FILES[split]}, not found')
    sequences = []
    for line in split_file.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        match = _SEQUENCE_LINE.match(line)
        if match is None:
            raise ValueError(f'{split_file}: expected lines like "sequence1", got {line!r}')
        sequences.append(f'seq-{int(match.group(1)):02d}')
    if not sequences:
        raise ValueError(f'{split_file}: lists no sequences')
    return sequences


def _color_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob('frame-*.color.*')
                  if p.name.lower().endswith(COLOR_SUFFIXES))


def _frame_stem(image_path: Path) -> str:
    """'frame-000000.color.png' -> 'frame-000000'."""
    return image_path.name.split('.', 1)[0]
