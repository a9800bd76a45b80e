"""Plain data carried between readers, the mapper and the localizer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import numpy.typing as npt


@dataclass
class Frame:
    """One posed (or unposed) RGB image.

    Attributes:
        name: identifier unique within its source (file stem or stamp).
        image: (H, W, 3) uint8 RGB, rectified (no lens distortion).
        K: (3, 3) float64 pinhole intrinsics of `image` as stored.
        world_from_cam: (4, 4) float64 camera-to-world pose (OpenCV camera axes),
            or None when unknown (live localization queries).
        stamp: seconds; 0.0 when the source has no time.
    """

    name: str
    image: npt.NDArray[np.uint8]
    K: npt.NDArray[np.float64]
    world_from_cam: Optional[npt.NDArray[np.float64]] = None
    stamp: float = 0.0

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(
                f'frame {self.name}: image must be (H, W, 3) uint8 RGB, got '
                f'{self.image.shape} {self.image.dtype}')
        self._check_geometry()

    def _check_geometry(self) -> None:
        """Checks (and normalises) K and world_from_cam; needs `height`, not the pixels, so
        that frames whose image loads on access (`ace_ros.data.base.LazyFrame`) share it."""
        self.K = np.asarray(self.K, dtype=np.float64)
        if self.K.shape != (3, 3):
            raise ValueError(f'frame {self.name}: K must be (3, 3), got {self.K.shape}')
        skew = self.K[0, 1]
        if skew != 0.0:
            # Calibrations often carry a numerically zero skew (DTU: 2e-4); PnP ignores skew,
            # so only skew that moves pixels visibly is refused.
            if abs(skew) * self.height >= 0.5:
                raise ValueError(f'frame {self.name}: K has skew {skew:g} (shifts pixels by up '
                                 f'to {abs(skew) * self.height:.1f} px); skewed '
                                 'intrinsics are not supported: rectify the images')
            self.K = self.K.copy()
            self.K[0, 1] = 0.0
        if self.world_from_cam is not None:
            self.world_from_cam = np.asarray(self.world_from_cam, dtype=np.float64)
            if self.world_from_cam.shape != (4, 4):
                raise ValueError(f'frame {self.name}: world_from_cam must be (4, 4), got '
                                 f'{self.world_from_cam.shape}')
            if not np.all(np.isfinite(self.world_from_cam)):
                raise ValueError(f'frame {self.name}: world_from_cam has non-finite values')

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


@dataclass
class LocalizationResult:
    """Outcome of localizing one frame; a failure is a result, not an exception.

    Attributes:
        success: a pose was found with enough inliers.
        world_from_cam: (4, 4) camera-to-world pose (identity when not successful).
        inlier_count: RANSAC inliers of the final pose.
        n_cells: 2D-3D correspondences the network produced.
        confidence: in [0, 1]; see ransac.py for its definition.
        timings_ms: per-stage wall time: 'prepare', 'encoder', 'head', 'ransac', 'total'.
        reason: why it failed ('' on success).
        region: the map region whose head gave the pose (0 for a map of one region).
    """

    success: bool
    world_from_cam: npt.NDArray[np.float64]
    inlier_count: int
    n_cells: int
    confidence: float
    timings_ms: dict
    reason: str = ''
    region: int = 0
