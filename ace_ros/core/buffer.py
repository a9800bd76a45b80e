"""The training buffer: encoder features of sampled cells from augmented mapping images.

Encoding each image once and training the head on shuffled cells from thousands of images
(instead of whole images) is what makes ACE's mapping fast and its gradients decorrelated.
The buffer lives on the training device (GPU memory when there is one).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch

from ace_ros.core import geometry
from ace_ros.core.config import MappingConfig
from ace_ros.core.device import autocast
from ace_ros.core.network import (cell_centers, ENCODER_STRIDE, Encoder, global_context,
                                  image_to_network_input)
from ace_ros.core.types import Frame

_logger = logging.getLogger(__name__)


@dataclass
class EncoderInput:
    """An image ready for the encoder, with the geometry that goes with it."""

    gray: Union[np.ndarray, torch.Tensor]  # (H, W) float32 in [0, 1], host or device
    K: np.ndarray               # (3, 3) intrinsics of `gray`
    cam_from_world: np.ndarray  # (4, 4), or identity when unknown
    valid: np.ndarray           # (H, W) bool: pixels that come from the source image


def to_gray(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) float32 in [0, 1]."""
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0


@dataclass(frozen=True)
class AugmentParams:
    """One image's draw of the mapping augmentation (`draw_augmentation`), or none of it.

    `prepare_image` (OpenCV) and `augment_torch.augment_batch` (one `grid_sample` per batch
    on the device) both apply it, so that tests can give both the same draw.
    """

    height: int                  # the frame is resized to (height, width) px first
    width: int
    #: (top, left, height, width) of the window kept (`aug_crop`); None: the whole image
    crop: Optional[Tuple[int, int, int, int]] = None
    augmented: bool = False      # False: no rotation warp, no photometric jitter
    angle_rad: float = 0.0       # in-plane camera rotation about the optical axis
    contrast: float = 1.0
    brightness: float = 1.0

    @property
    def size(self) -> Tuple[int, int]:
        """(height, width) of the output image."""
        return (self.crop[2], self.crop[3]) if self.crop is not None else (self.height,
                                                                           self.width)


@dataclass(frozen=True)
class AugmentGeometry:
    """Where `AugmentParams` moves the pixels of a frame, and the camera that sees them."""

    K: np.ndarray               # (3, 3) intrinsics of the output image
    cam_from_world: np.ndarray  # (4, 4): the input pose with the in-plane rotation applied
    #: (3, 3) pixel homography K R K^-1 from the resized (and cropped) image to the output
    rotation_homography: np.ndarray
    #: (3, 3) homography from the frame's pixels to the output's (OpenCV pixel centres)
    output_from_frame: np.ndarray


def _resized_width(frame_width: int, frame_height: int, height: int) -> int:
    return max(ENCODER_STRIDE, int(round(frame_width * height / frame_height)))


def draw_augmentation(rng: np.random.Generator, cfg: MappingConfig, frame_width: int,
                      frame_height: int, target_height: int) -> AugmentParams:
    """Draw one image's augmentation from `cfg`'s distributions (see `prepare_image`)."""
    height = int(round(target_height * rng.uniform(cfg.aug_scale_min, cfg.aug_scale_max)))
    width = _resized_width(frame_width, frame_height, height)
    crop = None
    if cfg.aug_crop and height > target_height:
        crop_w = min(width, max(ENCODER_STRIDE,
                                int(round(frame_width * target_height / frame_height))))
        top = int(rng.integers(0, height - target_height + 1))
        left = int(rng.integers(0, width - crop_w + 1))
        crop = (top, left, target_height, crop_w)
    angle = float(np.radians(rng.uniform(-cfg.aug_rotation_deg, cfg.aug_rotation_deg)))
    contrast = float(rng.uniform(1 - cfg.aug_contrast, 1 + cfg.aug_contrast))
    brightness = float(rng.uniform(1 - cfg.aug_brightness, 1 + cfg.aug_brightness))
    return AugmentParams(height, width, crop, True, angle, contrast, brightness)


def no_augmentation(frame_width: int, frame_height: int, target_height: int) -> AugmentParams:
    """The plain resize to `target_height` (localization, or augmentation off)."""
    return AugmentParams(target_height, _resized_width(frame_width, frame_height,
                                                       target_height))


def augment_geometry(params: AugmentParams, K: np.ndarray, frame_width: int,
                     frame_height: int, cam_from_world: np.ndarray) -> AugmentGeometry:
    """The output intrinsics, pose and pixel maps of `params` applied to a (frame_height,
    frame_width) frame with (3, 3) `K` and (4, 4) `cam_from_world`."""
    sx, sy = params.width / frame_width, params.height / frame_height
    K = geometry.scale_intrinsics(K, sx, sy)
    # Resize in the pixel-centre convention (x' = (x + 0.5) s - 0.5), then the crop's shift.
    output_from_frame = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5],
                                  [0.0, 0.0, 1.0]])
    if params.crop is not None:
        top, left = params.crop[:2]
        K = K.copy()
        K[0, 2] -= left
        K[1, 2] -= top
        output_from_frame[0, 2] -= left
        output_from_frame[1, 2] -= top
    rotation = np.eye(3)
    homography = np.eye(3)
    if params.augmented:
        rotation = geometry.axis_angle_to_matrix(np.array([0.0, 0.0, params.angle_rad]))
        homography = K @ rotation @ np.linalg.inv(K)
        cam_from_world = geometry.make_pose(rotation, np.zeros(3)) @ cam_from_world
    return AugmentGeometry(K, cam_from_world, homography, homography @ output_from_frame)


def prepare_image(frame: Frame, target_height: int, rng: Optional[np.random.Generator] = None,
                  cfg: Optional[MappingConfig] = None,
                  params: Optional[AugmentParams] = None) -> EncoderInput:
    """Resize `frame` to `target_height` and, when `rng` and `cfg` are given, augment it.

    Augmentation (mapping only): height scale in [aug_scale_min, aug_scale_max], an
    in-plane camera rotation in [-aug_rotation_deg, aug_rotation_deg] applied as the exact
    homography K R K^-1 (so fx != fy stays correct) with the pose rotated alike, and
    brightness/contrast jitter. Corners the rotation pads are marked invalid. With
    `aug_crop`, an image scaled above `target_height` is cropped at random to the unscaled
    size (the principal point moved alike). `params`, when given, is the draw to apply
    (`draw_augmentation`) instead of one from `rng`.
    """
    if params is None:
        if rng is not None and cfg is not None and cfg.augment:
            params = draw_augmentation(rng, cfg, frame.width, frame.height, target_height)
        else:
            params = no_augmentation(frame.width, frame.height, target_height)
    cam_from_world = (geometry.invert_pose(frame.world_from_cam)
                      if frame.world_from_cam is not None else np.eye(4))
    placed = augment_geometry(params, frame.K, frame.width, frame.height, cam_from_world)
    height, width = params.height, params.width
    interp = cv2.INTER_AREA if height < frame.height else cv2.INTER_LINEAR
    gray = to_gray(cv2.resize(frame.image, (width, height), interpolation=interp))
    if params.crop is not None:
        # A random window of the unscaled size: the encoder's cost is that of an unscaled
        # image (an AVX2 CPU encodes 720 px in 2.7x the time of 480 px), and the cells
        # still look as from a camera closer to the scene.
        top, left, height, width = params.crop
        gray = np.ascontiguousarray(gray[top:top + height, left:left + width])
    valid = np.ones((height, width), dtype=bool)
    if params.augmented:
        homography = placed.rotation_homography
        gray = cv2.warpPerspective(gray, homography, (width, height), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        valid = cv2.warpPerspective(np.ones((height, width), np.uint8), homography,
                                    (width, height), flags=cv2.INTER_NEAREST,
                                    borderValue=0).astype(bool)
        mean = float(gray[valid].mean()) if valid.any() else 0.0
        gray = np.clip(((gray - mean) * params.contrast + mean) * params.brightness, 0.0, 1.0)
    return EncoderInput(gray.astype(np.float32), placed.K, placed.cam_from_world, valid)


def valid_cells(valid_pixels: np.ndarray) -> np.ndarray:
    """(H, W) bool pixels -> (ceil(H/8), ceil(W/8)) bool: cells whose block is all valid."""
    h, w = valid_pixels.shape
    rows, cols = -(-h // ENCODER_STRIDE), -(-w // ENCODER_STRIDE)
    padded = np.zeros((rows * ENCODER_STRIDE, cols * ENCODER_STRIDE), dtype=bool)
    padded[:h, :w] = valid_pixels
    return padded.reshape(rows, ENCODER_STRIDE, cols, ENCODER_STRIDE).all(axis=(1, 3))


def encode(encoder: Encoder, gray: Union[np.ndarray, torch.Tensor], device: torch.device,
           mixed_precision: bool = True) -> torch.Tensor:
    """(H, W) float32 gray (numpy, or a tensor on any device) -> (512, ceil(H/8), ceil(W/8))
    features (autocast dtype)."""
    image = torch.as_tensor(gray)[None, None].to(device)
    image = image_to_network_input(image).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(device, mixed_precision):
        return encoder(image)[0]


def target_cells(encoded: EncoderInput, world_points: np.ndarray,
                 valid: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Cells of `encoded` that triangulated `world_points` project into, and the target of
    each: the point moved onto the cell centre's ray at its own depth (so a target has no
    reprojection error of its own). Returns ((M,) flat cell indices, (M, 3) float32)."""
    cam = encoded.cam_from_world[:3, :3] @ world_points.T.astype(np.float64) \
        + encoded.cam_from_world[:3, 3:4]
    depth = cam[2]
    uv = (encoded.K @ cam)[:2] / np.maximum(depth, 1e-9)
    rows, cols = valid.shape
    # Cell (i, j) covers the pixel block [8j, 8j + 8): x in [8j - 0.5, 8j + 7.5).
    col = np.floor((uv[0] + 0.5) / ENCODER_STRIDE).astype(np.int64)
    row = np.floor((uv[1] + 0.5) / ENCODER_STRIDE).astype(np.int64)
    ok = (depth > 0) & (col >= 0) & (col < cols) & (row >= 0) & (row < rows)
    ok[ok] &= valid[row[ok], col[ok]]
    row, col, depth = row[ok], col[ok], depth[ok]
    centre = np.stack([col * ENCODER_STRIDE + 3.5, row * ENCODER_STRIDE + 3.5,
                       np.ones(len(col))])
    ray_cam = np.linalg.solve(encoded.K, centre) * depth
    world_from_cam = geometry.invert_pose(encoded.cam_from_world)
    points = (world_from_cam[:3, :3] @ ray_cam + world_from_cam[:3, 3:4]).T
    # Several points in one cell: the last one wins (any is as good).
    return row * cols + col, points.astype(np.float32)


class TrainingBuffer:
    """Fixed-capacity store of (feature, pixel, image) samples on `device`.

    Per-image geometry (pose, K, K^-1) is kept once per encoded image and gathered by
    index, so each sample costs 512 fp16 values + 3 numbers.
    """

    def __init__(self, capacity: int, device: torch.device, feature_dim: int = 512) -> None:
        self.capacity = capacity
        self.device = device
        self.features = torch.empty((capacity, feature_dim), dtype=torch.float16, device=device)
        self.pixels = torch.empty((capacity, 2), dtype=torch.float32, device=device)
        self.image_index = torch.empty(capacity, dtype=torch.int32, device=device)
        #: Triangulated world point a cell sees (NaN: none), for `target_loss`.
        self.targets = torch.full((capacity, 3), float('nan'), dtype=torch.float32,
                                  device=device)
        self._cam_from_world: list = []
        self._K: list = []
        #: Each image's `global_context` (over its valid cells), for heads with context.
        self._context: list = []
        #: Name of the frame each encoded image came from ('' when not given).
        self.sources: list = []
        self.size = 0

    @property
    def full(self) -> bool:
        return self.size >= self.capacity

    @property
    def n_images(self) -> int:
        return len(self._K)

    def add_image(self, encoded: EncoderInput, features: torch.Tensor, max_samples: int,
                  generator: torch.Generator,
                  world_points: Optional[np.ndarray] = None, source: str = '') -> int:
        """Sample up to `max_samples` valid cells of one encoded image; returns the count.

        With `world_points` ((N, 3) triangulated points the image sees), the cells they fall
        in are sampled first (up to half the samples) and carry their point as a target.
        """
        valid = valid_cells(encoded.valid)
        cells = torch.from_numpy(valid).to(self.device).flatten()
        candidates = torch.nonzero(cells).squeeze(1)
        n = min(max_samples, candidates.numel(), self.capacity - self.size)
        if n <= 0:
            return 0
        c, h, w = features.shape
        targets = torch.full((h * w, 3), float('nan'), device=self.device)
        if world_points is not None and len(world_points):
            cell_ids, cell_points = target_cells(encoded, world_points, valid)
            targets[torch.from_numpy(cell_ids).to(self.device)] = \
                torch.from_numpy(cell_points).to(self.device)
        has_target = ~torch.isnan(targets[candidates, 0])
        first = candidates[has_target]
        first = first[torch.randperm(first.numel(), generator=generator)[:n // 2]
                      .to(self.device)]
        rest = candidates[~has_target]
        rest = rest[torch.randperm(rest.numel(), generator=generator)[:n - first.numel()]
                    .to(self.device)]
        chosen = torch.cat([first, rest])
        n = chosen.numel()
        centers = cell_centers(encoded.gray.shape[0], encoded.gray.shape[1], self.device)
        sl = slice(self.size, self.size + n)
        self.features[sl] = features.reshape(c, h * w)[:, chosen].T.to(torch.float16)
        self.pixels[sl] = centers.reshape(2, h * w)[:, chosen].T
        self.targets[sl] = targets[chosen]
        self.image_index[sl] = len(self._K)
        self._cam_from_world.append(encoded.cam_from_world[:3])
        self._K.append(encoded.K)
        self._context.append(global_context(features.reshape(c, h * w)[:, candidates].T))
        self.sources.append(source)
        self.size += n
        return n

    def attach_targets(self, image: int, world_points: np.ndarray) -> int:
        """Give the cells already sampled from encoded image `image` the targets that
        `world_points` (its frame's triangulated points) put in them (online mapping encodes
        keyframes before their points exist); returns how many cells got one."""
        if not len(world_points):
            return 0
        rows = torch.nonzero(self.image_index[:self.size] == image).squeeze(1)
        if not rows.numel():
            return 0
        cam_from_world = np.vstack([self._cam_from_world[image], [0.0, 0.0, 0.0, 1.0]])
        pixels = self.pixels[rows].cpu().numpy()
        grid = np.round((pixels - 3.5) / ENCODER_STRIDE).astype(np.int64)
        shape = (int(grid[:, 1].max()) + 1, int(grid[:, 0].max()) + 1)
        valid = np.zeros(shape, bool)
        valid[grid[:, 1], grid[:, 0]] = True  # only the sampled cells can take a target
        probe = EncoderInput(np.zeros((shape[0] * ENCODER_STRIDE, shape[1] * ENCODER_STRIDE),
                                      np.float32), self._K[image], cam_from_world, valid)
        cells, points = target_cells(probe, world_points, valid)
        if not len(cells):
            return 0
        lookup = dict(zip(cells.tolist(), range(len(cells))))
        flat = (grid[:, 1] * shape[1] + grid[:, 0]).tolist()
        hit = [(row, lookup[c]) for row, c in zip(rows.tolist(), flat) if c in lookup]
        if not hit:
            return 0
        index, which = zip(*hit)
        self.targets[torch.tensor(index, device=self.device)] = torch.from_numpy(
            points[list(which)]).to(self.device)
        return len(hit)

    def subset(self, images: Sequence[int]) -> 'TrainingBuffer':
        """A new buffer with the cells (and per-image tables) of encoded `images` only,
        renumbered in the order given: one region's share of the buffer (`regions.py`)."""
        images = list(images)
        wanted = torch.as_tensor(images, dtype=torch.long, device=self.device)
        index = self.image_index[:self.size].long()
        rows = torch.nonzero(torch.isin(index, wanted)).squeeze(1)
        part = TrainingBuffer(max(1, rows.numel()), self.device, self.features.shape[1])
        renumber = torch.full((self.n_images,), -1, dtype=torch.long, device=self.device)
        renumber[wanted] = torch.arange(len(images), device=self.device)
        n = rows.numel()
        part.features[:n] = self.features[rows]
        part.pixels[:n] = self.pixels[rows]
        part.targets[:n] = self.targets[rows]
        part.image_index[:n] = renumber[index[rows]].to(torch.int32)
        part._cam_from_world = [self._cam_from_world[i] for i in images]
        part._K = [self._K[i] for i in images]
        part._context = [self._context[i] for i in images]
        part.sources = [self.sources[i] for i in images]
        part.size = n
        return part

    def geometry_tables(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(M, 3, 4) cam_from_world, (M, 3, 3) K, (M, 3, 3) K^-1 as float32 on the device."""
        cam_from_world = torch.tensor(np.stack(self._cam_from_world), dtype=torch.float32)
        K = np.stack(self._K)
        return (cam_from_world.to(self.device),
                torch.tensor(K, dtype=torch.float32, device=self.device),
                torch.tensor(np.linalg.inv(K), dtype=torch.float32, device=self.device))

    def context_table(self) -> torch.Tensor:
        """(M, 512) float32: each encoded image's context vector, on the device."""
        return torch.stack(self._context).to(self.device)

    def nbytes(self) -> int:
        return (self.features.numel() * 2 + self.pixels.numel() * 4
                + self.image_index.numel() * 4 + self.targets.numel() * 4)
