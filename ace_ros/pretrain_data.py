"""Encoder pretraining data: its settings (`PretrainConfig`) and the views `ace_ros.pretrain`
trains on, with exact correspondences between cells of view A and positions in view B.

Two kinds of pair: two overlapping views of a synthetic room rendered with exact depth and
poses (`render_room`, `room_pair`: occlusion-checked reprojection), and two random homography
warps of one real photograph (`load_photographs`, `photo_pair`). `photometric` changes each
view's look independently. A room is a function of its seed; seeds from `VALIDATION_SEED` up
are never trained on (`validation_pairs`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ace_ros.core.network import ENCODER_STRIDE, cell_centers

#: Room seeds at or above this are never used for training: validation rooms.
VALIDATION_SEED = 900_000
_IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.ppm', '.bmp')


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of an encoder pretraining run; a checkpoint only resumes with the same."""

    steps: int = field(default=8000, metadata={'help': 'optimisation steps in total'})
    width: int = field(default=320, metadata={'help': 'training view width (px)'})
    height: int = field(default=240, metadata={'help': 'training view height (px)'})
    rooms: int = field(default=12, metadata={'help': 'synthetic rooms held in the pool'})
    frames_per_room: int = field(default=48, metadata={'help': 'rendered views per room lap'})
    refresh_every: int = field(
        default=40, metadata={'help': 'steps between replacing the oldest room by a new one'})
    first_seed: int = field(default=1000, metadata={'help': 'seed of the first room'})
    real_scenes: str = field(
        default='', metadata={'help': 'comma-separated folders of real photographs (ACE '
                                      'scene folders or plain image folders) for '
                                      'homography pairs; empty: synthetic only'})
    real_fraction: float = field(
        default=0.5, metadata={'help': 'fraction of pairs drawn from real photographs'})
    pairs_per_step: int = field(default=2, metadata={'help': 'view pairs per step'})
    cells_per_pair: int = field(default=512, metadata={'help': 'sampled cells per pair'})
    temperature: float = field(default=0.07, metadata={'help': 'InfoNCE temperature'})
    scale_weight: float = field(default=0.01,
                                metadata={'help': 'weight of the feature scale penalty'})
    learning_rate: float = field(default=3e-4, metadata={'help': 'peak AdamW learning rate'})
    weight_decay: float = field(default=1e-4, metadata={'help': 'AdamW weight decay'})
    warmup: int = field(default=200, metadata={'help': 'linear warm-up steps'})
    checkpoint_every: int = field(default=100, metadata={'help': 'steps between checkpoints'})
    validate_every: int = field(default=250, metadata={'help': 'steps between validations'})
    device: str = field(default='auto', metadata={'help': "'auto', 'cpu' or 'cuda'"})
    seed: int = field(default=0, metadata={'help': 'initialisation and sampling seed'})
    init_encoder: str = field(
        default='', metadata={'help': "encoder weights to start from; '' = random"})
    head_weight: float = field(
        default=0.0, metadata={'help': 'weight of the per-room scene-coordinate head loss '
                                       '(0: correspondence loss only)'})
    head_lr: float = field(default=1e-3, metadata={'help': 'AdamW learning rate of the heads'})
    head_steps: int = field(
        default=2, metadata={'help': 'extra head-only steps per step on the same features'})

    def __post_init__(self) -> None:
        for name in ('steps', 'rooms', 'frames_per_room', 'refresh_every', 'pairs_per_step',
                     'cells_per_pair', 'checkpoint_every', 'validate_every'):
            if getattr(self, name) < 1:
                raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
        if self.width % 8 or self.height % 8 or self.width < 64 or self.height < 64:
            raise ValueError(f'width and height must be multiples of 8 and >= 64, got '
                             f'{self.width} x {self.height}')
        if not 0 <= self.real_fraction <= 1:
            raise ValueError(f'real_fraction must be in [0, 1], got {self.real_fraction}')
        if self.head_weight < 0 or self.head_steps < 0 or self.head_lr <= 0:
            raise ValueError('head_weight and head_steps must be >= 0, head_lr > 0')
        if self.temperature <= 0 or self.learning_rate <= 0:
            raise ValueError('temperature and learning_rate must be > 0')
        if self.first_seed + self.steps // self.refresh_every + self.rooms > VALIDATION_SEED:
            raise ValueError(f'training rooms would reach the validation seeds (>= '
                             f'{VALIDATION_SEED}); lower first_seed')

    def real_folders(self) -> List[Path]:
        return [Path(p.strip()) for p in self.real_scenes.split(',') if p.strip()]


# --------------------------------------------------------------------------- view pairs

@dataclass
class Pair:
    """Two grayscale views and, for cells of view A, their position in view B."""

    gray_a: np.ndarray   # (H, W) uint8
    gray_b: np.ndarray   # (H, W) uint8
    cells_a: np.ndarray  # (N,) int64 flat cell index in A's feature grid
    xy_b: np.ndarray     # (N, 2) float32 pixel position in B
    room: Optional[int] = None          # seed of the synthetic room, None for photographs
    views: Tuple[int, int] = (-1, -1)   # the two views' indices in the room


@dataclass
class RoomViews:
    seed: int
    gray: np.ndarray     # (F, H, W) uint8
    depth: np.ndarray    # (F, H, W) float16 z-depth (m)
    poses: np.ndarray    # (F, 4, 4) world_from_cam
    K: np.ndarray        # (3, 3)
    partners: List[np.ndarray]  # per frame: indices of views that overlap it
    cell_world: np.ndarray  # (F, 3, h, w) float32 world point at each cell centre
    cell_valid: np.ndarray  # (F, h, w) bool: the cell centre has depth

    @property
    def mean_centre(self) -> np.ndarray:
        return self.poses[:, :3, 3].mean(axis=0)


def render_room(seed: int, cfg: PretrainConfig) -> RoomViews:
    """Render both laps of room `seed` at training resolution with exact depth."""
    from ace_ros.data.synthetic import SyntheticSceneConfig, generate_frames_with_depth
    rng = np.random.default_rng(seed)
    scene = SyntheticSceneConfig(
        seed=seed, width=cfg.width, height=cfg.height,
        focal=float(rng.uniform(0.9, 1.3)) * 525.0 * cfg.height / 480.0,
        n_train=cfg.frames_per_room, n_test=cfg.frames_per_room // 2,
        noise_std=float(rng.uniform(0, 3)), lighting_change=float(rng.uniform(0, 0.3)),
        motion_blur_px=float(rng.uniform(0, 3)), defocus_px=float(rng.uniform(0, 1)))
    grays, depths, poses = [], [], []
    for split in ('train', 'test'):
        for frame, depth in generate_frames_with_depth(scene, split):
            grays.append(cv2.cvtColor(frame.image, cv2.COLOR_RGB2GRAY))
            depths.append(depth.astype(np.float16))
            poses.append(frame.world_from_cam)
    poses_arr = np.stack(poses)
    centres, axes = poses_arr[:, :3, 3], poses_arr[:, :3, 2]
    distance = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    angle = np.degrees(np.arccos(np.clip(axes @ axes.T, -1, 1)))
    overlap = (distance < 0.8) & (angle < 40) & ~np.eye(len(poses), dtype=bool)
    partners = [np.flatnonzero(row) for row in overlap]
    K = scene.intrinsics()
    rows, cols = cfg.height // ENCODER_STRIDE, cfg.width // ENCODER_STRIDE
    xy = cell_centers(cfg.height, cfg.width).reshape(2, -1).T.numpy().astype(np.float64)
    u, v = np.round(xy).astype(int).T
    rays = np.c_[xy, np.ones(len(xy))] @ np.linalg.inv(K).T
    world, valid = [], []
    for depth, pose in zip(depths, poses_arr):
        z = depth[v, u].astype(np.float64)
        points = (rays * z[:, None]) @ pose[:3, :3].T + pose[:3, 3]
        world.append(points.T.reshape(3, rows, cols).astype(np.float32))
        valid.append((z > 0.05).reshape(rows, cols))
    return RoomViews(seed, np.stack(grays), np.stack(depths), poses_arr, K, partners,
                     np.stack(world), np.stack(valid))


def room_pair(room: RoomViews, rng: np.random.Generator, cfg: PretrainConfig,
              min_cells: int = 64) -> Optional[Pair]:
    """A random overlapping pair of views of `room` with occlusion-checked correspondences."""
    candidates = [i for i, p in enumerate(room.partners) if len(p)]
    if not candidates:
        return None
    for _ in range(4):
        a = int(rng.choice(candidates))
        b = int(rng.choice(room.partners[a]))
        xy_a = cell_centers(cfg.height, cfg.width).reshape(2, -1).T.numpy().astype(np.float64)
        u = np.round(xy_a[:, 0]).astype(int)
        v = np.round(xy_a[:, 1]).astype(int)
        depth_a = room.depth[a][v, u].astype(np.float64)
        rays = np.c_[xy_a, np.ones(len(xy_a))] @ np.linalg.inv(room.K).T
        world = (rays * depth_a[:, None]) @ room.poses[a][:3, :3].T + room.poses[a][:3, 3]
        cam_b = (world - room.poses[b][:3, 3]) @ room.poses[b][:3, :3]
        z_b = cam_b[:, 2]
        with np.errstate(divide='ignore', invalid='ignore'):
            proj = (cam_b / z_b[:, None]) @ room.K.T
        inside = (z_b > 0.1) & (proj[:, 0] >= 0) & (proj[:, 0] <= cfg.width - 1) & \
            (proj[:, 1] >= 0) & (proj[:, 1] <= cfg.height - 1) & (depth_a > 0.05)
        ub = np.clip(np.round(proj[:, 0]), 0, cfg.width - 1).astype(int)
        vb = np.clip(np.round(proj[:, 1]), 0, cfg.height - 1).astype(int)
        depth_b = room.depth[b][vb, ub].astype(np.float64)
        visible = inside & (np.abs(depth_b - z_b) < 0.03 * z_b + 0.01)
        cells = np.flatnonzero(visible)
        if len(cells) >= min_cells:
            return Pair(room.gray[a], room.gray[b], cells, proj[cells, :2].astype(np.float32),
                        room.seed, (a, b))
    return None


def _random_homography(rng: np.random.Generator, src_shape: Tuple[int, int],
                       out_w: int, out_h: int, strength: float) -> np.ndarray:
    """Maps source image pixels to a (out_h, out_w) view: crop, scale, rotate, tilt."""
    src_h, src_w = src_shape
    scale = out_h / src_h * math.exp(rng.uniform(-0.2, 0.6) * strength + 0.15)
    angle = rng.uniform(-30, 30) * strength
    centre = np.array([rng.uniform(0.3, 0.7) * src_w, rng.uniform(0.3, 0.7) * src_h])
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    to_centre = np.array([[1, 0, -centre[0]], [0, 1, -centre[1]], [0, 0, 1]])
    similarity = np.array([[scale * c, -scale * s, 0], [scale * s, scale * c, 0], [0, 0, 1]])
    tilt = np.eye(3)
    tilt[2, :2] = rng.uniform(-0.6, 0.6, 2) * strength / max(out_w, out_h)
    to_view = np.array([[1, 0, out_w / 2], [0, 1, out_h / 2], [0, 0, 1]])
    return to_view @ tilt @ similarity @ to_centre


def photo_pair(image: np.ndarray, rng: np.random.Generator, cfg: PretrainConfig,
               min_cells: int = 64) -> Optional[Pair]:
    """Two random homography views of one photograph with their exact correspondences."""
    w, h = cfg.width, cfg.height
    for _ in range(4):
        h_a = _random_homography(rng, image.shape[:2], w, h, strength=0.5)
        h_b = _random_homography(rng, image.shape[:2], w, h, strength=1.0)
        view_a = cv2.warpPerspective(image, h_a, (w, h), flags=cv2.INTER_AREA,
                                     borderValue=0)
        view_b = cv2.warpPerspective(image, h_b, (w, h), flags=cv2.INTER_AREA,
                                     borderValue=0)
        xy_a = cell_centers(h, w).reshape(2, -1).T.numpy().astype(np.float64)
        src = cv2.perspectiveTransform(xy_a[None], np.linalg.inv(h_a))[0]
        xy_b = cv2.perspectiveTransform(src[None], h_b)[0]
        margin = 4
        valid = (src[:, 0] >= 0) & (src[:, 0] <= image.shape[1] - 1) & \
            (src[:, 1] >= 0) & (src[:, 1] <= image.shape[0] - 1) & \
            (xy_b[:, 0] >= margin) & (xy_b[:, 0] <= w - 1 - margin) & \
            (xy_b[:, 1] >= margin) & (xy_b[:, 1] <= h - 1 - margin)
        cells = np.flatnonzero(valid)
        if len(cells) >= min_cells:
            return Pair(view_a, view_b, cells, xy_b[cells].astype(np.float32))
    return None


def load_photographs(folders: Sequence[Path], height: int) -> List[np.ndarray]:
    """Grayscale images under `folders` (recursively), resized to 1.5 x `height` tall."""
    images = []
    for folder in folders:
        if not folder.is_dir():
            raise ValueError(f'real scene folder {folder} does not exist')
        files = sorted(p for p in folder.rglob('*') if p.suffix.lower() in _IMAGE_SUFFIXES
                       and 'depth' not in p.parts)
        if not files:
            raise ValueError(f'real scene folder {folder} holds no images')
        for path in files:
            gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            if gray is None:
                raise ValueError(f'cannot read image {path}')
            scale = 1.5 * height / gray.shape[0]
            images.append(cv2.resize(gray, None, fx=scale, fy=scale,
                                     interpolation=cv2.INTER_AREA))
    return images


def photometric(gray: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Independent gain, gamma, contrast, blur and noise per image of (B, 1, H, W) in [0, 1]."""
    b = gray.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(b, 1, 1, 1, generator=generator) * (hi - lo) + lo

    gray = gray.clamp(1e-4, 1) ** torch.exp(uniform(-0.4, 0.4))
    mean = gray.mean(dim=(2, 3), keepdim=True)
    gray = (gray - mean) * uniform(0.6, 1.4) + mean * uniform(0.6, 1.4)
    blur = torch.rand(b, generator=generator) < 0.3
    if blur.any():
        kernel = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
        k2 = (kernel[:, None] * kernel[None]).view(1, 1, 5, 5)
        gray[blur] = F.conv2d(F.pad(gray[blur], (2, 2, 2, 2), mode='replicate'), k2)
    gray = gray + torch.randn(gray.shape, generator=generator) * uniform(0, 0.03)
    return gray.clamp(0, 1)


def validation_pairs(cfg: PretrainConfig, n_rooms: int = 2, per_room: int = 4) -> List[Pair]:
    """Fixed pairs from rooms never used for training."""
    rng = np.random.default_rng(12345)
    pairs = []
    for k in range(n_rooms):
        room = render_room(VALIDATION_SEED + k, cfg)
        while len(pairs) < (k + 1) * per_room:
            pair = room_pair(room, rng, cfg)
            if pair is not None:
                pairs.append(pair)
    return pairs
