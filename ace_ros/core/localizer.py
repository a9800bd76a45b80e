"""Localization: image -> encoder -> head -> 2D-3D matches -> PnP-RANSAC -> pose."""

from __future__ import annotations

import logging
import time
from typing import Optional

import numpy as np
import torch

from ace_ros.core import device as device_lib
from ace_ros.core import geometry
from ace_ros.core.buffer import encode, prepare_image
from ace_ros.core.config import LocalizationConfig
from ace_ros.core.mapfile import SceneMap, load_map
from ace_ros.core.network import Encoder, Head, HeadConfig, cell_centers, image_to_network_input
from ace_ros.core.ransac import RansacSettings, ransac_pnp
from ace_ros.core.types import Frame, LocalizationResult
from ace_ros.core.weights import build_encoder

_logger = logging.getLogger(__name__)


def head_from_map(scene_map: SceneMap, device: torch.device) -> Head:
    """Rebuild the trained head stored in a map, in eval mode on `device`."""
    head = Head(HeadConfig(**scene_map.head_config))
    state = {k: v.float() for k, v in scene_map.head_state.items()}
    state['scene_mean'] = scene_map.scene_mean.float()
    head.load_state_dict(state)
    return head.eval().requires_grad_(False).to(device)


class Localizer:
    """Localizes frames in one scene map; holds the encoder and head on `self.device`."""

    def __init__(self, scene_map: SceneMap, cfg: LocalizationConfig,
                 encoder: Optional[Encoder] = None, encoder_sha256: str = '') -> None:
        self.cfg = cfg
        self.device = device_lib.resolve_device(cfg.device)
        if encoder is None:
            encoder, encoder_sha256, label = build_encoder(cfg.encoder, self.device)
            _logger.info('encoder: %s', label)
        if encoder_sha256 != scene_map.encoder_sha256:
            raise ValueError(
                f'the map was built with encoder {scene_map.encoder_sha256[:12]} but the '
                f'loaded encoder is {encoder_sha256[:12]}; pass the encoder the map was built '
                'with (--encoder / encoder parameter) or map the scene again')
        self.encoder = encoder.to(self.device)
        self.head = head_from_map(scene_map, self.device)
        self.scene_map = scene_map
        self.backend = device_lib.resolve_backend(cfg.backend, self.device)
        self._openvino = None
        if self.backend == 'openvino':
            from ace_ros.core.openvino_backend import OpenVinoNetwork
            self._openvino = OpenVinoNetwork(self.encoder, self.head, cfg.mixed_precision)
        self.ransac = RansacSettings(
            hypotheses=cfg.ransac_hypotheses, inlier_threshold_px=cfg.inlier_threshold_px,
            max_reprojection_px=cfg.max_reprojection_px,
            max_refinement_iterations=cfg.refinement_iterations, min_inliers=cfg.min_inliers,
            max_hypothesis_tries=cfg.ransac_max_tries)
        self._rng = np.random.default_rng(cfg.seed)

    @classmethod
    def from_file(cls, map_path: str, cfg: LocalizationConfig) -> 'Localizer':
        return cls(load_map(map_path), cfg)

    def predict_scene_coordinates(self, frame: Frame) -> tuple:
        """Frame -> ((N, 2) pixels, (N, 3) world points, K at network scale, timings)."""
        timings = {}
        start = time.perf_counter()
        prepared = prepare_image(frame, self.cfg.image_height)
        timings['prepare'] = time.perf_counter() - start
        start = time.perf_counter()
        if self._openvino is not None:
            features = self._openvino.encode(
                image_to_network_input(torch.from_numpy(prepared.gray)[None, None]))
        else:
            features = encode(self.encoder, prepared.gray, self.device,
                              self.cfg.mixed_precision)
        timings['encoder'] = time.perf_counter() - start
        start = time.perf_counter()
        c, h, w = features.shape
        if self._openvino is not None:
            points = self._openvino.predict(features.reshape(c, h * w).T)
        else:
            with torch.inference_mode(), device_lib.autocast(self.device,
                                                             self.cfg.mixed_precision):
                points = self.head(features.reshape(c, h * w).T)
        # The one GPU -> CPU step: RANSAC and OpenCV's PnP run on the CPU.
        points_np = points.float().cpu().numpy().astype(np.float64)
        timings['head'] = time.perf_counter() - start
        pixels = cell_centers(prepared.gray.shape[0], prepared.gray.shape[1])
        pixels_np = pixels.reshape(2, h * w).T.numpy().astype(np.float64)
        return pixels_np, points_np, prepared.K, timings

    def localize(self, frame: Frame) -> LocalizationResult:
        """Estimate `frame`'s camera-to-world pose; never raises for a failed estimate."""
        start = time.perf_counter()
        pixels, points, K, timings = self.predict_scene_coordinates(frame)
        ransac_start = time.perf_counter()
        estimate = ransac_pnp(pixels, points, K, self.ransac, self._rng)
        timings['ransac'] = time.perf_counter() - ransac_start
        timings['total'] = time.perf_counter() - start
        timings_ms = {k: v * 1000.0 for k, v in timings.items()}
        world_from_cam = estimate.world_from_cam if estimate.success else np.eye(4)
        return LocalizationResult(
            success=bool(estimate.success), world_from_cam=world_from_cam,
            inlier_count=int(estimate.inlier_count), n_cells=len(points),
            confidence=float(estimate.confidence), timings_ms=timings_ms,
            reason=estimate.reason)


def pose_errors(result: LocalizationResult, world_from_cam_gt: np.ndarray) -> tuple:
    """(translation error m, rotation error deg); infinite for a failed result."""
    if not result.success:
        return float('inf'), float('inf')
    return geometry.pose_error(result.world_from_cam, world_from_cam_gt)
