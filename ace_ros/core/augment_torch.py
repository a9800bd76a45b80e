"""The mapping augmentation of `buffer.prepare_image`, batched on the device (issue 14).

`prepare_image` resizes, crops and rotates one image after another on the CPU with OpenCV
(three resamplings). Here a batch of frames of one size, already on the device, goes through
one `grid_sample`: each output pixel is mapped back to its frame through the inverse of the
composite homography of resize, crop and in-plane rotation (`buffer.augment_geometry`, the
same as the CPU path's), then the photometric jitter is applied over each image's valid
pixels. The draw (`AugmentParams`) is shared with the CPU path, so tests can compare both.

Differences from the CPU path, by design: the frame is sampled bilinearly once (OpenCV
resizes, with INTER_AREA when shrinking, then warps), so values differ by interpolation
(and, when shrinking by more than `aug_scale_max / aug_scale_min`, by aliasing: a batch
whose every image shrinks is first resized once with antialiasing to the largest of their
sizes); the gray conversion is done in float before resampling, not rounded to 8 bits after
it; and the pixels the rotation pads are exactly 0 before jitter, without OpenCV's
half-pixel fade at the border. Validity is the same test as OpenCV's nearest-neighbour warp
of a mask of ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ace_ros.core.buffer import (AugmentGeometry, AugmentParams, augment_geometry,
                                 draw_augmentation, EncoderInput, no_augmentation)
from ace_ros.core.config import MappingConfig

#: ITU-R BT.601 luma weights, as OpenCV's COLOR_RGB2GRAY.
_LUMA = (0.299, 0.587, 0.114)


@dataclass
class AugmentedBatch:
    """A batch of augmented images on a common canvas on the device.

    Image i occupies `gray[i, :h, :w]` with (h, w) = `sizes[i]`; the canvas beyond it is 0
    and invalid.
    """

    gray: torch.Tensor           # (B, Hc, Wc) float32 in [0, 1]
    valid: torch.Tensor          # (B, Hc, Wc) bool: pixels that come from the frame
    K: np.ndarray                # (B, 3, 3) float64 intrinsics of each output image
    cam_from_world: np.ndarray   # (B, 4, 4) float64, rotated with the image
    sizes: List[Tuple[int, int]]  # (h, w) of each output image
    params: List[AugmentParams]

    def __len__(self) -> int:
        return len(self.sizes)

    def item(self, i: int) -> EncoderInput:
        """Image `i` as `prepare_image` returns it (numpy, on the host)."""
        h, w = self.sizes[i]
        return EncoderInput(self.gray[i, :h, :w].cpu().numpy(), self.K[i].copy(),
                            self.cam_from_world[i].copy(), self.valid[i, :h, :w].cpu().numpy())


def draw_batch(n: int, cfg: MappingConfig, frame_width: int, frame_height: int,
               target_height: int, generator: torch.Generator) -> List[AugmentParams]:
    """`n` independent draws of `buffer.draw_augmentation` (same distributions), made with a
    torch `generator` (on any device; one host copy of the numbers)."""
    uniform = torch.rand((n, 6), generator=generator, device=generator.device,
                         dtype=torch.float64).cpu().numpy()
    return [draw_augmentation(_GeneratorDraws(row), cfg, frame_width, frame_height,
                              target_height) for row in uniform]


class _GeneratorDraws:
    """The two `np.random.Generator` methods `draw_augmentation` calls, fed from uniform
    numbers in [0, 1) drawn beforehand."""

    def __init__(self, values: np.ndarray) -> None:
        self._values = iter(values.tolist())

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * next(self._values)

    def integers(self, low: int, high: int) -> int:
        return min(high - 1, low + int(next(self._values) * (high - low)))


def to_gray_batch(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 RGB or (B, H, W) float gray in [0, 1] -> (B, H, W) float32."""
    if images.dim() == 4 and images.shape[-1] == 3:
        rgb = images.float()  # element-wise, not a matmul: no TF32 rounding on a GPU
        return (rgb[..., 0] * _LUMA[0] + rgb[..., 1] * _LUMA[1] + rgb[..., 2] * _LUMA[2]) / 255.0
    if images.dim() == 3:
        return images.float()
    raise ValueError(f'images must be (B, H, W, 3) RGB or (B, H, W) gray, got shape '
                     f'{tuple(images.shape)}')


def augment_batch(images: torch.Tensor, K: np.ndarray, cam_from_world: np.ndarray,
                  target_height: int, cfg: Optional[MappingConfig] = None,
                  generator: Optional[torch.Generator] = None,
                  params: Optional[Sequence[AugmentParams]] = None) -> AugmentedBatch:
    """Augment a batch of frames of one size on `images.device`, as `prepare_image` does.

    Args:
        images: (B, H, W, 3) uint8 RGB or (B, H, W) float gray in [0, 1], on the device.
        K: (B, 3, 3) intrinsics of the frames.
        cam_from_world: (B, 4, 4) poses of the frames (identity when unknown).
        target_height: the height images are encoded at (px).
        cfg, generator: draw the augmentation from `cfg` with `generator` (`draw_batch`);
            without them (or with `cfg.augment` off) the frames are only resized.
        params: the B draws to apply instead (e.g. the ones given to `prepare_image`).

    Returns:
        The images on a canvas of the largest output size, with their K and poses.

    Raises:
        ValueError: for inputs of the wrong shape or count.
    """
    gray = to_gray_batch(images)
    n, frame_h, frame_w = gray.shape
    K = np.asarray(K, dtype=np.float64)
    cam_from_world = np.asarray(cam_from_world, dtype=np.float64)
    if K.shape != (n, 3, 3) or cam_from_world.shape != (n, 4, 4):
        raise ValueError(f'{n} images need K (B, 3, 3) and cam_from_world (B, 4, 4), got '
                         f'{K.shape} and {cam_from_world.shape}')
    if params is None:
        if cfg is not None and cfg.augment and generator is not None:
            params = draw_batch(n, cfg, frame_w, frame_h, target_height, generator)
        else:
            params = [no_augmentation(frame_w, frame_h, target_height)] * n
    if len(params) != n:
        raise ValueError(f'{n} images but {len(params)} augmentation draws')
    placed = [augment_geometry(p, k, frame_w, frame_h, c)
              for p, k, c in zip(params, K, cam_from_world)]
    sizes = [p.size for p in params]
    canvas = (max(s[0] for s in sizes), max(s[1] for s in sizes))
    source, source_from_frame = _antialiased(gray, params)
    out, valid = _warp(source, source_from_frame, placed, params, canvas)
    return AugmentedBatch(out, valid, np.stack([p.K for p in placed]),
                          np.stack([p.cam_from_world for p in placed]), sizes, list(params))


def _antialiased(gray: torch.Tensor, params: Sequence[AugmentParams]
                 ) -> Tuple[torch.Tensor, np.ndarray]:
    """The frames, resized once with antialiasing when every image of the batch shrinks
    (bilinear sampling alone would alias), and the (3, 3) map from frame pixels to them."""
    frame_h, frame_w = gray.shape[1:]
    height = max(p.height for p in params)
    if height >= frame_h:
        return gray[:, None], np.eye(3)
    width = max(p.width for p in params)
    resized = F.interpolate(gray[:, None], size=(height, width), mode='bilinear',
                            align_corners=False, antialias=True)
    sx, sy = width / frame_w, height / frame_h
    return resized, np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5],
                              [0.0, 0.0, 1.0]])


def _warp(source: torch.Tensor, source_from_frame: np.ndarray,
          placed: Sequence[AugmentGeometry], params: Sequence[AugmentParams],
          canvas: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """One `grid_sample` of (B, 1, Hs, Ws) `source` onto a `canvas` (Hc, Wc), the validity
    of each output pixel and the photometric jitter: (B, Hc, Wc) float32 and bool."""
    device = source.device
    n, _, src_h, src_w = source.shape
    # Output pixel -> source pixel, and output pixel -> the resized-and-cropped image the
    # rotation is applied to (validity is decided there, as OpenCV's warp of the mask).
    source_from_output = np.stack([source_from_frame @ np.linalg.inv(p.output_from_frame)
                                   for p in placed])
    crop_from_output = np.stack([np.linalg.inv(p.rotation_homography) for p in placed])
    maps = torch.from_numpy(np.concatenate([source_from_output, crop_from_output], 1)).to(
        device, torch.float32)  # (B, 6, 3)
    ys, xs = torch.meshgrid(torch.arange(canvas[0], device=device, dtype=torch.float32),
                            torch.arange(canvas[1], device=device, dtype=torch.float32),
                            indexing='ij')
    pixels = torch.stack([xs, ys], -1).reshape(-1, 2)  # (P, 2)
    # Element-wise rather than a matmul, which a GPU may run in TF32 (~1 px off at 1000 px).
    mapped = (maps[:, :, 0, None] * pixels[:, 0] + maps[:, :, 1, None] * pixels[:, 1]
              + maps[:, :, 2, None]).reshape(n, 2, 3, -1)  # (B, 2 maps, xyw, P)
    mapped = mapped[:, :, :2] / mapped[:, :, 2:]
    src, crop = mapped[:, 0], mapped[:, 1]  # (B, 2, P) each
    scale = torch.tensor([2.0 / src_w, 2.0 / src_h], device=device)[None, :, None]
    grid = ((src + 0.5) * scale - 1.0).permute(0, 2, 1).reshape(n, canvas[0], canvas[1], 2)
    out = F.grid_sample(source, grid, mode='bilinear', padding_mode='border',
                        align_corners=False)[:, 0]
    sizes = torch.tensor([p.size for p in params], device=device, dtype=torch.float32)
    inside = ((crop >= -0.5) & (crop < sizes.flip(1)[:, :, None] - 0.5)).all(1)
    on_image = (pixels[None] < sizes.flip(1)[:, None, :]).all(-1)
    warped = torch.tensor([p.augmented for p in params], device=device)[:, None]
    valid = (on_image & (inside | ~warped)).reshape(n, *canvas)
    out = out * valid
    jitter = torch.tensor([[p.contrast, p.brightness] for p in params], device=device,
                          dtype=torch.float32)
    count = valid.sum((1, 2)).clamp(min=1)
    mean = (out.sum((1, 2)) / count)[:, None, None]
    jittered = ((out - mean) * jitter[:, 0, None, None] + mean) * jitter[:, 1, None, None]
    # The CPU path jitters the padded corners too (before they are masked by `valid`).
    on_image = on_image.reshape(n, *canvas)
    out = torch.where(warped[:, :, None] & on_image, jittered.clamp(0.0, 1.0), out)
    return out.contiguous(), valid
