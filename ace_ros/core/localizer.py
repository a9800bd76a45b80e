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
from ace_ros.core.network import Head, HeadConfig, cell_centers, global_context
from ace_ros.core.ransac import RansacSettings, coherent_cells, ransac_pnp
from ace_ros.core.ransac_torch import ransac_pnp_torch
from ace_ros.core.regions import rank_regions
from ace_ros.core.runtime import make_runtime, Runtime
from ace_ros.core.types import Frame, LocalizationResult

_logger = logging.getLogger(__name__)


def head_from_map(scene_map: SceneMap, device: torch.device, region: int = 0) -> Head:
    """Rebuild the trained head of `region` (0: a one-region map's only head) stored in a
    map, in eval mode on `device`."""
    head = Head(HeadConfig(**scene_map.head_config))
    stored = scene_map.region(region)
    state = {k: v.float() for k, v in stored.head_state.items()}
    state['scene_mean'] = stored.scene_mean.float()
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
        #: One head per region of the map (most maps have one); `head` is region 0's.
        self.heads = [head_from_map(scene_map, self.device, r)
                      for r in range(scene_map.n_regions)]
        self.head = self.heads[0]
        self.scene_map = scene_map
        # Converted once: they are compared with every frame's context.
        self._region_contexts = (scene_map.region_contexts.float()
                                 if scene_map.region_contexts is not None else None)
        #: Images are encoded at the height the map was made at unless the settings say.
        self.image_height = cfg.image_height or int(
            scene_map.mapping_config.get('image_height', 480))
        # Maps from before encoder_precision existed were all built from float features.
        # A network per region; only region 0's encodes (the backends compile lazily).
        chosen = [runtime.localization_network(
            head, cfg.backend, cfg.head_precision,
            scene_map.mapping_config.get('encoder_precision', 'float'), cfg.mixed_precision)
            for head in self.heads]
        self.backend, self.head_precision = chosen[0].backend, chosen[0].head_precision
        self._network = chosen[0].network
        self._predicts = [network.predict for network in chosen]
        self.ransac = RansacSettings.from_config(cfg)
        self._rng = np.random.default_rng(cfg.seed)
        #: RANSAC in torch on the scene coordinates' device (`ransac_torch`), not numpy on the
        #: host: off the CPU only, as on a CPU the numpy one is 1.6-3x faster (benchmarks/
        #: RESULTS.md, session 21). Settable, e.g. to test the torch path on a CPU.
        self.ransac_on_device = self.device.type != 'cpu'
        self._generator = torch.Generator(self.device).manual_seed(cfg.seed)

    @classmethod
    def from_file(cls, map_path: str, cfg: LocalizationConfig,
                  runtime: Optional[Runtime] = None) -> 'Localizer':
        return cls(load_map(map_path), cfg, runtime)

    def warm_up(self, frame: Frame) -> float:
        """Run the network once on `frame` (its size, not its pose, matters); seconds taken.

        The first frame of each image size pays for OpenVINO's compile (~3 s, and ~2 s more
        for each further region's head) and oneDNN's kernel choice; warming up keeps that out
        of per-frame timings.
        """
        start = time.perf_counter()
        encoded = self._encode(frame)
        for region in range(self.scene_map.n_regions):  # each region's head compiles once
            self._predict(encoded, region)
        return time.perf_counter() - start

    def predict_scene_coordinates(self, frame: Frame, region: Optional[int] = None
                                  ) -> 'SceneCoordinates':
        """The head's scene coordinates for the cell grid of `frame`: those of `region`'s
        head, by default the region the image's context ranks first."""
        encoded = self._encode(frame)
        if region is None:
            region = self.rank_regions(encoded.features)[0]
        return self._predict(encoded, region)

    def rank_regions(self, features: torch.Tensor) -> list:
        """The map's regions in the order an image with (C, H, W) `features` tries them."""
        if self.scene_map.n_regions == 1:
            return [0]
        return rank_regions(global_context(features.float()[None])[0],
                            self._region_contexts, self.scene_map.region_labels,
                            self.scene_map.n_regions)

    def _encode(self, frame: Frame) -> '_Encoded':
        timings = {}
        start = time.perf_counter()
        prepared = prepare_image(frame, self.image_height)
        timings['prepare'] = time.perf_counter() - start
        start = time.perf_counter()
        features = self._network.encode(prepared.gray)
        timings['encoder'] = time.perf_counter() - start
        return _Encoded(prepared.gray.shape, prepared.K, features, timings)

    def _predict(self, encoded: '_Encoded', region: int) -> 'SceneCoordinates':
        return self._predict_on_device(encoded, region)[0]

    def _predict_on_device(self, encoded: '_Encoded', region: int
                           ) -> Tuple['SceneCoordinates', torch.Tensor]:
        """The scene coordinates on the host, and (H * W, 3) as the head left them."""
        start = time.perf_counter()
        _, h, w = encoded.features.shape
        points = self._predicts[region](encoded.features)
        # The one GPU -> CPU step: coherent_cells and the numpy RANSAC run on the CPU.
        points_np = points.float().cpu().numpy().astype(np.float64)
        timings = dict(encoded.timings, head=time.perf_counter() - start)
        pixels = cell_centers(encoded.shape[0], encoded.shape[1])
        pixels_np = pixels.permute(1, 2, 0).numpy().astype(np.float64)
        return SceneCoordinates(pixels_np, points_np.reshape(h, w, 3), encoded.K,
                                timings), points

    def localize(self, frame: Frame) -> LocalizationResult:
        """Estimate `frame`'s camera-to-world pose; never raises for a failed estimate.

        A map of several regions: the regions are tried in the order the image's context
        ranks them, at most `regions_tried`, until one gives `region_accept_inliers`
        inliers; the pose with the most inliers wins.
        """
        start = time.perf_counter()
        encoded = self._encode(frame)
        timings = dict(encoded.timings, head=0.0, ransac=0.0)
        best, best_region = None, 0
        for region in self.rank_regions(encoded.features)[:self.cfg.regions_tried]:
            (pixels, points, K, predicted), on_device = self._predict_on_device(encoded, region)
            timings['head'] += predicted['head']
            ransac_start = time.perf_counter()
            pool = coherent_cells(points, self.cfg.ransac_sample_fraction)
            if self.ransac_on_device:  # on the head's own output, not the host copy
                estimate = ransac_pnp_torch(
                    torch.from_numpy(pixels.reshape(-1, 2)), on_device.reshape(-1, 3), K,
                    self.ransac, self._generator, sample_mask=torch.from_numpy(pool))
            else:
                estimate = ransac_pnp(pixels.reshape(-1, 2), points.reshape(-1, 3), K,
                                      self.ransac, self._rng, sample_mask=pool)
            timings['ransac'] += time.perf_counter() - ransac_start
            if best is None or (estimate.success, estimate.inlier_count) > (
                    best.success, best.inlier_count):
                best, best_region = estimate, region
            if estimate.success and estimate.inlier_count >= self.cfg.region_accept_inliers:
                break
        timings['total'] = time.perf_counter() - start
        timings_ms = {k: v * 1000.0 for k, v in timings.items()}
        world_from_cam = best.world_from_cam if best.success else np.eye(4)
        return LocalizationResult(
            success=bool(best.success), world_from_cam=world_from_cam,
            inlier_count=int(best.inlier_count), n_cells=best.n_correspondences,
            confidence=float(best.confidence), timings_ms=timings_ms,
            reason=best.reason, region=best_region)


class _Encoded(NamedTuple):
    """A frame as the encoder left it: its (H, W) at the map's height, its K there, its
    (C, H/8, W/8) features and the seconds of 'prepare' and 'encoder'."""
    shape: Tuple[int, int]
    K: np.ndarray
    features: torch.Tensor
    timings: Dict[str, float]


def pose_errors(result: LocalizationResult, world_from_cam_gt: np.ndarray
                ) -> Tuple[float, float]:
    """(translation error m, rotation error deg); infinite for a failed result."""
    if not result.success:
        return float('inf'), float('inf')
    return geometry.pose_error(result.world_from_cam, world_from_cam_gt)
