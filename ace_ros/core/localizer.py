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
from ace_ros.core.network import Encoder, Head, HeadConfig, cell_centers
from ace_ros.core.ransac import RansacSettings, coherent_cells, ransac_pnp
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


class TorchNetwork:
    """Encoder and head run by PyTorch (any device); OpenVinoNetwork has the same interface."""

    def __init__(self, encoder: Encoder, head: Head, device: torch.device,
                 mixed_precision: bool = True) -> None:
        self.encoder, self.head = encoder, head
        self.device, self.mixed_precision = device, mixed_precision

    def encode(self, gray: np.ndarray) -> torch.Tensor:
        """(H, W) float32 gray in [0, 1] -> (512, H/8, W/8) features."""
        return encode(self.encoder, gray, self.device, self.mixed_precision)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """(512, H, W) features -> (H * W, 3) scene coordinates, cells in row-major order."""
        c, h, w = features.shape
        with torch.inference_mode(), device_lib.autocast(self.device, self.mixed_precision):
            return self.head(features.reshape(c, h * w).T)


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
        #: Images are encoded at the height the map was made at unless the settings say.
        self.image_height = cfg.image_height or int(
            scene_map.mapping_config.get('image_height', 480))
        # Maps from before encoder_precision existed were all built from float features.
        self.backend = device_lib.resolve_backend(
            cfg.backend, self.device, scene_map.mapping_config.get('encoder_precision', 'float'))
        if self.backend.startswith('openvino'):
            from ace_ros.core.openvino_backend import OpenVinoNetwork
            self._network = OpenVinoNetwork(
                self.encoder, self.head, cfg.mixed_precision,
                int8_encoder=self.backend == 'openvino-int8', encoder_id=encoder_sha256)
        else:
            self._network = TorchNetwork(self.encoder, self.head, self.device,
                                         cfg.mixed_precision)
        self.head_precision = device_lib.resolve_head_precision(cfg.head_precision, self.device)
        self._predict = self._network.predict
        if self.head_precision == 'int8':
            from ace_ros.core.quantized_head import Int8HeadPredictor
            self._predict = Int8HeadPredictor(self.head)
        self.ransac = RansacSettings(
            hypotheses=cfg.ransac_hypotheses, inlier_threshold_px=cfg.inlier_threshold_px,
            max_reprojection_px=cfg.max_reprojection_px,
            max_refinement_iterations=cfg.refinement_iterations, min_inliers=cfg.min_inliers,
            max_hypothesis_tries=cfg.ransac_max_tries)
        self._rng = np.random.default_rng(cfg.seed)

    @classmethod
    def from_file(cls, map_path: str, cfg: LocalizationConfig) -> 'Localizer':
        return cls(load_map(map_path), cfg)

    def warm_up(self, frame: Frame) -> float:
        """Run the network once on `frame` (its size, not its pose, matters); seconds taken.

        The first frame of each image size pays for OpenVINO's compile (~3 s) and oneDNN's
        kernel choice; warming up keeps that out of per-frame timings.
        """
        start = time.perf_counter()
        self.predict_scene_coordinates(frame)
        return time.perf_counter() - start

    def predict_scene_coordinates(self, frame: Frame) -> tuple:
        """Frame -> ((H, W, 2) pixels, (H, W, 3) world points of the cell grid, K at network
        scale, timings)."""
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
        return pixels_np, points_np.reshape(h, w, 3), prepared.K, timings

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


def pose_errors(result: LocalizationResult, world_from_cam_gt: np.ndarray) -> tuple:
    """(translation error m, rotation error deg); infinite for a failed result."""
    if not result.success:
        return float('inf'), float('inf')
    return geometry.pose_error(result.world_from_cam, world_from_cam_gt)
