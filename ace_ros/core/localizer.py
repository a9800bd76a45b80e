"""Localization: image -> encoder -> head -> 2D-3D matches -> PnP-RANSAC -> pose."""

from __future__ import annotations

import logging
import time
from typing import Dict, NamedTuple, Optional, Tuple

import numpy as np
import torch

from ace_ros.core import geometry
from ace_ros.core.buffer import prepare_image
from ace_ros.core.config import LocalizationConfig
from ace_ros.core.mapfile import SceneMap, load_map
from ace_ros.core.network import Head, HeadConfig, cell_centers
from ace_ros.core.ransac import RansacSettings, coherent_cells, ransac_pnp
from ace_ros.core.runtime import make_runtime, Runtime
from ace_ros.core.types import Frame, LocalizationResult

_logger = logging.getLogger(__name__)


def head_from_map(scene_map: SceneMap, device: torch.device) -> Head:
    """Rebuild the trained head stored in a map, in eval mode on `device`."""
    head = Head(HeadConfig(**scene_map.head_config))
    state = {k: v.float() for k, v in scene_map.head_state.items()}
    state['scene_mean'] = scene_map.scene_mean.float()
    head.load_state_dict(state)
    return head.eval().requires_grad_(False).to(device)


class SceneCoordinates(NamedTuple):
    """What `Localizer.predict_scene_coordinates` gives (a tuple: it unpacks as one)."""
    #: (H, W, 2) pixel centres of the cells, at network scale
    pixels: np.ndarray
    #: (H, W, 3) float64 world points the head predicts for them
    points: np.ndarray
    #: (3, 3) K at network scale
    K: np.ndarray
    #: seconds per stage: 'prepare', 'encoder', 'head'
    timings: Dict[str, float]


class Localizer:
    """Localizes frames in one scene map; holds the encoder and head on `self.device`."""

    def __init__(self, scene_map: SceneMap, cfg: LocalizationConfig,
                 runtime: Optional[Runtime] = None) -> None:
        """`runtime`: where to run and the encoder; by default made from `cfg`'s device and
        encoder (without calibration images: an int8 encoder must then be cached)."""
        self.cfg = cfg
        if runtime is None:
            runtime = make_runtime(cfg.device, cfg.encoder)
            _logger.info('encoder: %s', runtime.encoder_label)
        if runtime.encoder_sha256 != scene_map.encoder_sha256:
            raise ValueError(
                f'the map was built with encoder {scene_map.encoder_sha256[:12]} but the '
                f'loaded encoder is {runtime.encoder_sha256[:12]}; pass the encoder the map '
                'was built with (--encoder / encoder parameter) or map the scene again')
        self.runtime = runtime
        self.device = runtime.device
        self.head = head_from_map(scene_map, self.device)
        self.scene_map = scene_map
        #: Images are encoded at the height the map was made at unless the settings say.
        self.image_height = cfg.image_height or int(
            scene_map.mapping_config.get('image_height', 480))
        # Maps from before encoder_precision existed were all built from float features.
        chosen = runtime.localization_network(
            self.head, cfg.backend, cfg.head_precision,
            scene_map.mapping_config.get('encoder_precision', 'float'), cfg.mixed_precision)
        self.backend, self.head_precision = chosen.backend, chosen.head_precision
        self._network, self._predict = chosen.network, chosen.predict
        self.ransac = RansacSettings.from_config(cfg)
        self._rng = np.random.default_rng(cfg.seed)

    @classmethod
    def from_file(cls, map_path: str, cfg: LocalizationConfig,
                  runtime: Optional[Runtime] = None) -> 'Localizer':
        return cls(load_map(map_path), cfg, runtime)

    def warm_up(self, frame: Frame) -> float:
        """Run the network once on `frame` (its size, not its pose, matters); seconds taken.

        The first frame of each image size pays for OpenVINO's compile (~3 s) and oneDNN's
        kernel choice; warming up keeps that out of per-frame timings.
        """
        start = time.perf_counter()
        self.predict_scene_coordinates(frame)
        return time.perf_counter() - start

    def predict_scene_coordinates(self, frame: Frame) -> 'SceneCoordinates':
        """The head's scene coordinates for the cell grid of `frame`."""
        timings = {}
        start = time.perf_counter()
        prepared = prepare_image(frame, self.image_height)
        timings['prepare'] = time.perf_counter() - start
        start = time.perf_counter()
        features = self._network.encode(prepared.gray)
        timings['encoder'] = time.perf_counter() - start
        start = time.perf_counter()
        _, h, w = features.shape
        points = self._predict(features)
        # The one GPU -> CPU step: RANSAC and OpenCV's PnP run on the CPU.
        points_np = points.float().cpu().numpy().astype(np.float64)
        timings['head'] = time.perf_counter() - start
        pixels = cell_centers(prepared.gray.shape[0], prepared.gray.shape[1])
        pixels_np = pixels.permute(1, 2, 0).numpy().astype(np.float64)
        return SceneCoordinates(pixels_np, points_np.reshape(h, w, 3), prepared.K, timings)

    def localize(self, frame: Frame) -> LocalizationResult:
        """Estimate `frame`'s camera-to-world pose; never raises for a failed estimate."""
        start = time.perf_counter()
        pixels, points, K, timings = self.predict_scene_coordinates(frame)
        ransac_start = time.perf_counter()
        pool = coherent_cells(points, self.cfg.ransac_sample_fraction)
        estimate = ransac_pnp(pixels.reshape(-1, 2), points.reshape(-1, 3), K, self.ransac,
                              self._rng, sample_mask=pool)
        timings['ransac'] = time.perf_counter() - ransac_start
        timings['total'] = time.perf_counter() - start
        timings_ms = {k: v * 1000.0 for k, v in timings.items()}
        world_from_cam = estimate.world_from_cam if estimate.success else np.eye(4)
        return LocalizationResult(
            success=bool(estimate.success), world_from_cam=world_from_cam,
            inlier_count=int(estimate.inlier_count), n_cells=estimate.n_correspondences,
            confidence=float(estimate.confidence), timings_ms=timings_ms,
            reason=estimate.reason)


def pose_errors(result: LocalizationResult, world_from_cam_gt: np.ndarray
                ) -> Tuple[float, float]:
    """(translation error m, rotation error deg); infinite for a failed result."""
    if not result.success:
        return float('inf'), float('inf')
    return geometry.pose_error(result.world_from_cam, world_from_cam_gt)
