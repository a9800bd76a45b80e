"""Open any supported dataset folder or ROS bag as a FrameSource: `open_source(path)`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ace_ros.data.ace_layout import ace_splits, AceLayoutSource, is_ace_scene
from ace_ros.data.base import block_split, FrameSource, Subset
from ace_ros.data.colmap import ColmapSource, is_colmap_model
from ace_ros.data.rosbag_source import is_rosbag, RosbagSource
from ace_ros.data.seven_scenes import is_seven_scenes, SevenScenesSource
from ace_ros.data.tum import is_tum_sequence, TumSource

FORMATS = ('ace', 'seven_scenes', 'tum', 'colmap', 'rosbag')
SPLITS = ('train', 'test')
#: Sequences (TUM, ROS bags) and COLMAP models have no official split: alternate blocks of
#: this many frames, the even blocks (starting with the first) for mapping ('train') and the
#: odd ones as queries.
SEQUENCE_SPLIT_BLOCK = 25


def detect_format(path: str | Path) -> str:
    """Which of FORMATS the folder (or bag file) `path` holds.

    Raises:
        FileNotFoundError: if `path` is neither a folder nor a bag file.
        ValueError: if no format matches; the message lists what was looked for.
    """
    path = Path(path)
    if is_rosbag(path):
        return 'rosbag'
    if not path.is_dir():
        raise FileNotFoundError(f'{path}: not a folder or a ROS bag (.bag, .mcap, .db3)')
    if is_ace_scene(path) or ace_splits(path):
        return 'ace'
    if is_tum_sequence(path):
        return 'tum'
    if is_colmap_model(path):
        return 'colmap'
    if is_seven_scenes(path):
        return 'seven_scenes'
    raise ValueError(
        f'{path}: unknown dataset layout; looked for ACE (rgb/ and calibration/ folders, '
        f'directly or under train/ or test/), TUM (rgb.txt) and 7-Scenes (TrainSplit.txt, '
        f'TestSplit.txt or seq-XX/frame-XXXXXX.color.png), COLMAP (cameras and images .txt '
        f'or .bin, directly or in sparse/0 or sparse) and rosbag2 (metadata.yaml, .mcap or '
        f'.db3)')


def open_source(path: str | Path, fmt: str = 'auto', split: Optional[str] = None,
                **kwargs: Any) -> FrameSource:
    """Open a dataset folder or ROS bag as a FrameSource.

    Args:
        path: scene or sequence folder, COLMAP scene or model folder, rosbag2 folder or
            ROS 1 `.bag`.
        fmt: one of FORMATS, or 'auto' to call `detect_format`.
        split: None for all frames, or 'train' / 'test':
            - ACE layout: the `train/` or `test/` folder (None for a flat scene, or a scene
              with a single split folder);
            - 7-Scenes: the sequences listed in TrainSplit.txt / TestSplit.txt;
            - TUM, COLMAP (frames in image-name order), ROS bags: alternate blocks of
              SEQUENCE_SPLIT_BLOCK frames (see `block_split`).
        **kwargs: passed to the reader (`SevenScenesSource`, `TumSource`, `ColmapSource`,
            `RosbagSource`), e.g. `K`, `images` or `image_topic`.

    Raises:
        ValueError: for an unknown format or split, or a split the folder does not have.
    """
    path = Path(path)
    if split is not None and split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS} or None, got {split!r}')
    if fmt == 'auto':
        fmt = detect_format(path)
    if fmt == 'ace':
        if kwargs:
            raise ValueError(f'ACE-layout reader takes no options, got {sorted(kwargs)}')
        return AceLayoutSource(_ace_folder(path, split))
    if fmt == 'seven_scenes':
        return SevenScenesSource(path, split=split, **kwargs)
    if fmt in ('tum', 'colmap', 'rosbag'):
        source: FrameSource
        if fmt == 'tum':
            source = TumSource(path, **kwargs)
        elif fmt == 'colmap':
            source = ColmapSource(path, **kwargs)
        else:
            source = RosbagSource(path, **kwargs)
        if split is None:
            return source
        return Subset(source, block_split(len(source), SEQUENCE_SPLIT_BLOCK,
                                          SPLITS.index(split)))
    raise ValueError(f'fmt must be one of {FORMATS} or \'auto\', got {fmt!r}')


def _ace_folder(path: Path, split: Optional[str]) -> Path:
    """The folder holding rgb/, poses/, calibration/ for `split`."""
    splits = ace_splits(path)
    if is_ace_scene(path):
        if split is not None:
            raise ValueError(f'{path}: flat ACE scene (no train/ or test/ folders), so split '
                             f'must be None, got {split!r}')
        return path
    if split is None:
        if len(splits) == 1:
            return path / splits[0]
        raise ValueError(f'{path}: ACE scene with split folders {splits}; pass split='
                         f'\'train\' or \'test\'')
    if split not in splits:
        raise ValueError(f'{path}: no {split}/ folder in ACE layout; found {splits}')
    return path / split
