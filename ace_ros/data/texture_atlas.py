"""Many surface textures packed into one mip-mapped image, sampled with cv2.remap."""

from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np
import numpy.typing as npt

U8Image = npt.NDArray[np.uint8]
F32Array = npt.NDArray[np.float32]

#: cv2.remap reads sources with both sides below 2^15 only.
MAX_SIDE = 32767


class TextureAtlas:
    """Texture tiles packed side by side, with a mip pyramid for filtered lookups.

    Level 0 holds the tiles (each with a replicated border) at rows [0, H0). Level k halves
    level k - 1 (area filter); level 1 lies below level 0 at the left, levels 2.. to its
    right, so one image (and one cv2.remap call) serves every level.

    Args:
        tiles: (h_i, w_i, 3) uint8 textures.
        levels: number of mip levels (>= 1).
        max_width: widest level-0 atlas (texels) unless a tile is wider.

    Attributes:
        offsets: (N, 2) float64 level-0 atlas (x, y) of texel (0, 0) of each tile.

    Raises:
        ValueError: if the atlas would exceed what cv2.remap can read.
    """

    def __init__(self, tiles: Sequence[U8Image], levels: int = 4,
                 max_width: int = 16384) -> None:
        if levels < 1:
            raise ValueError(f'levels must be >= 1, got {levels}')
        self.levels = levels
        align = 2 ** (levels - 1)
        pad = 2 * align  # bilinear reads of the coarsest level stay inside the border

        def up(n: int) -> int:
            return -(-n // align) * align

        padded = [(up(t.shape[0] + 2 * pad), up(t.shape[1] + 2 * pad)) for t in tiles]
        area = sum(h * w for h, w in padded)
        width = up(max(max(w for _, w in padded), min(max_width, int(math.sqrt(area)))))
        # Shelf packing, tallest first.
        corners = np.zeros((len(tiles), 2), np.int64)
        x = y = shelf = 0
        for i in sorted(range(len(tiles)), key=lambda i: -padded[i][0]):
            h, w = padded[i]
            if x + w > width:
                x, y, shelf = 0, y + shelf, 0
            corners[i] = (x, y)
            x, shelf = x + w, max(shelf, h)
        height = up(y + shelf)
        if height + height // 2 > MAX_SIDE or width > MAX_SIDE:
            raise ValueError(f'texture atlas of {width} x {height} texels is too large for '
                             f'cv2.remap (max side {MAX_SIDE}); use a larger texel size')
        mega = np.zeros((height + (height // 2 if levels > 1 else 0), width, 3), np.uint8)
        for tile, (x, y), (h, w) in zip(tiles, corners, padded):
            mega[y:y + h, x:x + w] = cv2.copyMakeBorder(
                tile, pad, h - tile.shape[0] - pad, pad, w - tile.shape[1] - pad,
                cv2.BORDER_REPLICATE)
        base_x, base_y = [0.0], [0.0]
        level = mega[:height]
        for k in range(1, levels):
            level = cv2.resize(level, (level.shape[1] // 2, level.shape[0] // 2),
                               interpolation=cv2.INTER_AREA)
            x0 = width - width // 2 ** (k - 1)
            mega[height:height + level.shape[0], x0:x0 + level.shape[1]] = level
            base_x.append(float(x0))
            base_y.append(float(height))
        self.offsets = (corners + pad).astype(np.float64)
        self.image = mega
        self._scale = np.array([0.5 ** k for k in range(levels)], np.float32)
        self._base_x = np.array(base_x, np.float32) - 0.5
        self._base_y = np.array(base_y, np.float32) - 0.5

    def sample(self, map_x: F32Array, map_y: F32Array, lod: F32Array) -> U8Image:
        """Trilinear lookup.

        Args:
            map_x, map_y: (H, W) float32 level-0 atlas coordinates (texel centres at integers).
            lod: (H, W) float32 mip level, log2 of the pixel footprint in level-0 texels.

        Returns:
            (H, W, 3) uint8 colours.
        """
        map_x = np.asarray(map_x, np.float32)
        map_y = np.asarray(map_y, np.float32)
        if self.levels == 1:
            return cv2.remap(self.image, map_x, map_y, cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REPLICATE)
        lod = np.clip(lod, 0.0, self.levels - 1.0).astype(np.float32, copy=False)
        lo = np.minimum(lod.astype(np.int32), self.levels - 2)
        frac = lod - lo.astype(np.float32)
        scale = self._scale[lo]
        u = (map_x + 0.5) * scale
        v = (map_y + 0.5) * scale
        fine = cv2.remap(self.image, u + self._base_x[lo], v + self._base_y[lo],
                         cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        u *= 0.5
        v *= 0.5
        coarse = cv2.remap(self.image, u + self._base_x[lo + 1], v + self._base_y[lo + 1],
                           cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return cv2.blendLinear(fine, coarse, 1.0 - frac, frac)
