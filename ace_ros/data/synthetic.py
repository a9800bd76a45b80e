"""Synthetic posed RGB scenes for tests, CI and demos: `generate_frames(cfg, 'train')`.

A scene is a random furnished room (`SyntheticRoom`, deterministic per seed) seen along a
smooth camera loop at 1.2-1.8 m height; the test split is a second lap close to the first
(shifted by up to ~0.12 m and ~15 degrees, frames falling between the train frames), as
7-Scenes test sequences revisit the rooms of the training sequences. Poses and intrinsics
are exact, so views agree with each other to the pixel.

`write_synthetic_scene(out_dir, cfg)` writes the ACE layout (`<out>/{train,test}/{rgb,poses,
calibration}`, plus `depth/` as uint16 millimetre PNGs when `cfg.write_depth`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import functools
import logging
from pathlib import Path
from typing import Iterator, Tuple

import cv2
import numpy as np
import numpy.typing as npt

from ace_ros.core.types import Frame
from ace_ros.data.ace_layout import write_ace_scene
from ace_ros.data.synthetic_layout import SPLITS
from ace_ros.data.synthetic_room import SyntheticRoom

_logger = logging.getLogger(__name__)

#: Time between consecutive frames of a split, for `Frame.stamp` (s).
FRAME_INTERVAL = 1.0 / 30.0


@dataclass(frozen=True)
class SyntheticSceneConfig:
    """What to render; field names double as CLI flags."""

    seed: int = field(default=0, metadata={'help': 'room and trajectory seed (>= 0)'})
    width: int = field(default=640, metadata={'help': 'image width (px)'})
    height: int = field(default=480, metadata={'help': 'image height (px)'})
    focal: float = field(default=525.0, metadata={'help': 'focal length fx (px)'})
    focal_y: float = field(default=0.0, metadata={'help': 'focal length fy (px); 0: = focal'})
    n_train: int = field(default=300, metadata={'help': 'frames in the train split'})
    n_test: int = field(default=100, metadata={'help': 'frames in the test split'})
    path_fraction: float = field(default=1.0, metadata={
        'help': 'part of the camera loop both splits cover (1 = the whole room)'})
    texel_size: float = field(default=0.004, metadata={'help': 'texture resolution (m/texel)'})
    noise_std: float = field(default=0.0, metadata={'help': 'Gaussian pixel noise (8-bit levels)'})
    motion_blur_px: float = field(default=0.0, metadata={'help': 'max motion blur length (px)'})
    defocus_px: float = field(default=0.0, metadata={'help': 'max Gaussian defocus sigma (px)'})
    lighting_change: float = field(
        default=0.0, metadata={'help': 'relative amplitude of slow exposure / tint changes'})
    write_depth: bool = field(default=False, metadata={'help': 'also write depth/ (uint16 mm)'})

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f'seed must be >= 0, got {self.seed}')
        if not (8 <= self.width <= 8192 and 8 <= self.height <= 8192):
            raise ValueError(f'image size must be within 8..8192 px, got {self.width} x '
                             f'{self.height}')
        if self.focal <= 0 or self.focal_y < 0:
            raise ValueError(f'focal must be > 0 and focal_y >= 0 (0: same as focal), got '
                             f'{self.focal} and {self.focal_y}')
        if self.n_train < 0 or self.n_test < 0 or self.n_train + self.n_test == 0:
            raise ValueError(f'n_train and n_test must be >= 0 and not both 0, got '
                             f'{self.n_train} and {self.n_test}')
        if not 0.0 < self.path_fraction <= 1.0:
            raise ValueError(f'path_fraction must be in (0, 1], got {self.path_fraction}')
        if not 0.002 <= self.texel_size <= 0.05:
            raise ValueError(f'texel_size must be in [0.002, 0.05] m, got {self.texel_size}')
        for name in ('noise_std', 'motion_blur_px', 'defocus_px'):
            if not getattr(self, name) >= 0:
                raise ValueError(f'{name} must be >= 0, got {getattr(self, name)}')
        if not 0 <= self.lighting_change <= 0.5:
            raise ValueError(f'lighting_change must be in [0, 0.5], got {self.lighting_change}')

    def intrinsics(self) -> npt.NDArray[np.float64]:
        """(3, 3) K with the principal point at the image centre."""
        fy = self.focal_y or self.focal
        return np.array([[self.focal, 0.0, (self.width - 1) / 2.0],
                         [0.0, fy, (self.height - 1) / 2.0],
                         [0.0, 0.0, 1.0]])


@functools.lru_cache(maxsize=2)
def cached_room(seed: int, texel_size: float = 0.004) -> SyntheticRoom:
    """The room for `seed`, built once and cached (the two most recent rooms are kept)."""
    return SyntheticRoom(seed, texel_size)


def generate_frames(cfg: SyntheticSceneConfig, split: str = 'train') -> Iterator[Frame]:
    """Render the frames of one split, in trajectory order.

    Frames are named `frame-000000`, ... within the split; stamps are FRAME_INTERVAL apart.
    """
    for frame, _ in generate_frames_with_depth(cfg, split):
        yield frame


def generate_frames_with_depth(cfg: SyntheticSceneConfig, split: str = 'train'
                               ) -> Iterator[Tuple[Frame, npt.NDArray[np.float32]]]:
    """Like `generate_frames`, also yielding each frame's (H, W) float32 z-depth (m).

    Depth is exact and unaffected by the noise, blur and lighting options.
    """
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    room = cached_room(cfg.seed, cfg.texel_size)
    n_frames = cfg.n_train if split == 'train' else cfg.n_test
    K = cfg.intrinsics()
    for index, world_from_cam in enumerate(room.trajectory(n_frames, split, cfg.path_fraction)):
        image, depth = room.render(world_from_cam, K, cfg.width, cfg.height)
        image = _camera_effects(image, cfg, split, index, n_frames)
        yield Frame(name=f'frame-{index:06d}', image=image, K=K.copy(),
                    world_from_cam=world_from_cam, stamp=index * FRAME_INTERVAL), depth


def write_synthetic_scene(out_dir: str | Path, cfg: SyntheticSceneConfig) -> Path:
    """Render both splits into an ACE-layout scene folder.

    Writes `<out_dir>/<split>/{rgb,poses,calibration}/frame-NNNNNN.{png,txt,txt}` for the
    splits with frames, and `<split>/depth/frame-NNNNNN.png` (uint16 millimetres) when
    `cfg.write_depth`.

    Returns:
        `out_dir`.

    Raises:
        FileExistsError: if a split's rgb/ folder already holds files.
    """
    out_dir = Path(out_dir)
    for split in SPLITS:
        if (cfg.n_train if split == 'train' else cfg.n_test) == 0:
            continue
        rgb = out_dir / split / 'rgb'
        if rgb.is_dir() and any(rgb.iterdir()):
            raise FileExistsError(f'{rgb} already holds files; write to an empty folder')
        frames = (_write_depth(out_dir / split / 'depth', cfg, split) if cfg.write_depth
                  else generate_frames(cfg, split))
        write_ace_scene(out_dir, frames, split)
    _logger.info('wrote synthetic scene (seed %d, %d train, %d test frames) to %s', cfg.seed,
                 cfg.n_train, cfg.n_test, out_dir)
    return out_dir


def _write_depth(folder: Path, cfg: SyntheticSceneConfig, split: str) -> Iterator[Frame]:
    folder.mkdir(parents=True, exist_ok=True)
    for frame, depth in generate_frames_with_depth(cfg, split):
        millimetres = np.clip(np.round(depth * 1000.0), 0, 65535).astype(np.uint16)
        path = folder / f'{frame.name}.png'
        if not cv2.imwrite(str(path), millimetres):
            raise ValueError(f'cannot write depth image {path}')
        yield frame


def _camera_effects(image: npt.NDArray[np.uint8], cfg: SyntheticSceneConfig, split: str,
                    index: int, n_frames: int) -> npt.NDArray[np.uint8]:
    """Exposure / tint drift, defocus, motion blur and noise; deterministic per frame."""
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split), index])
    if cfg.lighting_change > 0:
        # Smooth in the loop fraction, so neighbouring frames see similar light.
        phase = 2 * np.pi * (index + 0.5 * SPLITS.index(split)) / max(n_frames, 1)
        seed_phase = np.random.default_rng(cfg.seed).uniform(0, 2 * np.pi, 4)
        gain = 1 + cfg.lighting_change * np.sin(2 * phase + seed_phase[0])
        tint = 1 + cfg.lighting_change / 4 * np.sin(phase + seed_phase[1:])
        levels = np.arange(256, dtype=np.float64)[:, None] * gain * tint
        lut = np.clip(np.round(levels), 0, 255).astype(np.uint8).reshape(256, 1, 3)
        image = cv2.LUT(image, lut)
    if cfg.defocus_px > 0:
        image = cv2.GaussianBlur(image, (0, 0), cfg.defocus_px * rng.uniform(0.3, 1.0))
    if cfg.motion_blur_px > 0:
        length = cfg.motion_blur_px * rng.uniform(0.3, 1.0)
        size = int(np.ceil(length)) | 1
        kernel = np.zeros((size, size), np.float32)
        angle = rng.uniform(0, np.pi)
        half = (length - 1) / 2 * np.array([np.cos(angle), np.sin(angle)])
        centre = np.array([size // 2, size // 2])
        cv2.line(kernel, tuple(np.round(centre - half).astype(int)),
                 tuple(np.round(centre + half).astype(int)), 1.0, 1, cv2.LINE_AA)
        image = cv2.filter2D(image, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT)
    if cfg.noise_std > 0:
        noise = rng.standard_normal(image.shape, dtype=np.float32) * cfg.noise_std
        image = np.clip(image + noise + 0.5, 0, 255).astype(np.uint8)
    return image
