"""The map's point cloud, for display: the trained head's scene coordinates for buffer cells.

The cells are those training used, so the cloud shows what the head learned, where it learned
it: a map that is wrong somewhere looks wrong there. Only cells whose prediction reprojects
close to the cell are kept (the head's own outliers would smear the picture). Each point gets
the RGB of the pixel it projects to in its source frame (the original image at its recorded
pose: the buffer holds augmented grey features, not colour), so colour costs one image
decode per source frame; the frames are capped at `MAX_CLOUD_FRAMES`, spread over the mapping
sequence, to keep that bounded for frames decoded on access (`LazyFrame`).
"""

from __future__ import annotations

import logging
import time
from typing import Dict, Iterator, Optional, Sequence

import numpy as np
import torch

from ace_ros.core import device as device_lib
from ace_ros.core import geometry
from ace_ros.core.buffer import TrainingBuffer
from ace_ros.core.mapfile import MapCloud
from ace_ros.core.network import Head
from ace_ros.core.types import Frame

_logger = logging.getLogger(__name__)

#: Points kept at most: ~300 kB in the map file, a PointCloud2 of 320 kB; RViz draws it
#: without effort and it is dense enough to recognise a room.
MAX_CLOUD_POINTS = 20_000
#: Source frames the points come from at most (each is decoded once for the colours).
MAX_CLOUD_FRAMES = 100
#: A cell's prediction is kept when it reprojects within this distance (px at the mapping
#: image height) of the cell's centre, half the localizer's default inlier threshold.
MAX_CLOUD_ERROR_PX = 5.0
#: Cells predicted per kept point at most. Prediction stops once `max_points` are within the
#: threshold, so a good head costs little more than `max_points` cells; this bounds the cost
#: for a weak one, which then gets fewer points. Measured on 2 CPU cores shared with another
#: job, 40 synthetic-room frames, 300 tiny-preset iterations (42 % of cells within 5 px):
#: 25k cells in 2.2 s, 40k in 4.3 s; so at most 30k cells, ~3 s.
CANDIDATES_PER_POINT = 1.5
#: Colour of a point whose source frame is not among the frames given.
UNKNOWN_COLOR = (128, 128, 128)
_CHUNK = 4096


def predict_cloud(head: Head, buffer: TrainingBuffer, frames: Sequence[Frame],
                  depth_min: float = 0.1, depth_max: float = 1000.0,
                  mixed_precision: bool = True, max_points: int = MAX_CLOUD_POINTS,
                  max_frames: int = MAX_CLOUD_FRAMES, max_error_px: float = MAX_CLOUD_ERROR_PX,
                  seed: int = 0) -> Optional[MapCloud]:
    """A coloured point cloud of the scene from the cells in `buffer` and the trained `head`.

    Args:
        head: the trained head, on the buffer's device.
        buffer: the training buffer the head was trained on.
        frames: the posed mapping frames; each buffer image's source name picks its frame.
        depth_min, depth_max: predictions outside this depth range (m) are dropped.
        mixed_precision: predict under the device's autocast, as training did.
        max_points, max_frames, max_error_px: see the module constants.
        seed: which cells are drawn.

    Returns:
        Up to `max_points` points from up to `max_frames` frames, or None when no cell's
        prediction is within `max_error_px` (or the buffer is empty).
    """
    begin = time.perf_counter()
    if buffer.size == 0 or max_points <= 0:
        return None
    by_name: Dict[str, Frame] = {f.name: f for f in frames if f.world_from_cam is not None}
    image_index = buffer.image_index[:buffer.size].cpu().numpy().astype(np.int64)
    sources = list(buffer.sources)
    # Frames in the order they were first encoded, spread evenly over that order.
    known = list(dict.fromkeys(s for s in sources if s in by_name))
    if known:
        chosen = {known[i] for i in np.unique(
            np.linspace(0, len(known) - 1, min(max_frames, len(known))).round().astype(int))}
        image_ok = np.array([s in chosen for s in sources])
        candidates = np.flatnonzero(image_ok[image_index])
    else:  # no names to find the frames by (a buffer filled without them): grey points
        candidates = np.arange(buffer.size)
    rng = np.random.default_rng(seed)
    candidates = rng.permutation(candidates)[:int(np.ceil(max_points * CANDIDATES_PER_POINT))]
    kept_chunks, point_chunks, tried, n_good = [], [], 0, 0
    for chunk, points, errors, depths in _predict(head, buffer, candidates, mixed_precision):
        good = (depths >= depth_min) & (depths <= depth_max) & (errors < max_error_px)
        kept_chunks.append(chunk[good])
        point_chunks.append(points[good])
        tried += len(chunk)
        n_good += int(good.sum())
        if n_good >= max_points:
            break
    kept = np.concatenate(kept_chunks)[:max_points]
    points = np.concatenate(point_chunks)[:max_points]
    if not len(kept):
        _logger.warning('map cloud: none of %d cells predicts within %.0f px; the map has no '
                        'cloud', tried, max_error_px)
        return None
    colors = np.empty((len(kept), 3), np.uint8)
    colors[:] = UNKNOWN_COLOR
    kept_sources = np.array([sources[i] for i in image_index[kept]], dtype=object)
    for name in set(kept_sources.tolist()) & by_name.keys():
        rows = np.flatnonzero(kept_sources == name)
        colors[rows] = _colors_in(by_name[name], points[rows])
    _logger.info('map cloud: %d points from %d cells of %d frames (%.0f %% within %.0f px) in '
                 '%.1f s', len(kept), tried, len(set(kept_sources.tolist())),
                 100.0 * n_good / tried, max_error_px, time.perf_counter() - begin)
    return MapCloud(points, colors)


def _predict(head: Head, buffer: TrainingBuffer, cells: np.ndarray,
             mixed_precision: bool) -> Iterator[tuple]:
    """Chunk by chunk of buffer `cells`: (the chunk's cells, (n, 3) float32 world points,
    (n,) reprojection errors in px and (n,) depths in their encoded image), as numpy."""
    device = buffer.device
    cam_from_world, K, _ = buffer.geometry_tables()
    contexts = buffer.context_table() if head.config.context_channels else None
    for start in range(0, len(cells), _CHUNK):
        chunk = cells[start:start + _CHUNK]
        index = torch.from_numpy(chunk).to(device)
        image = buffer.image_index[index].long()
        with torch.inference_mode():
            with device_lib.autocast(device, mixed_precision):
                world = head(buffer.features[index], contexts, image).float()
            cam = (cam_from_world[image, :, :3] @ world[:, :, None])[:, :, 0] \
                + cam_from_world[image, :, 3]
            depth = cam[:, 2]
            uv = (K[image] @ cam[:, :, None])[:, :2, 0] / depth.clamp(min=1e-6)[:, None]
            error = (uv - buffer.pixels[index]).norm(dim=1)
        yield chunk, world.cpu().numpy(), error.cpu().numpy(), depth.cpu().numpy()


def _colors_in(frame: Frame, world_points: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 RGB of `frame`'s pixels that (N, 3) `world_points` project to (nearest
    pixel, clamped to the image: the points reproject within a few px of a cell)."""
    cam_from_world = geometry.invert_pose(frame.world_from_cam)
    cam = world_points.astype(np.float64) @ cam_from_world[:3, :3].T + cam_from_world[:3, 3]
    uv = cam @ frame.K.T
    uv = uv[:, :2] / np.maximum(uv[:, 2:3], 1e-6)
    image = frame.image  # decoded once here for a LazyFrame
    height, width = image.shape[:2]
    cols = np.clip(np.round(uv[:, 0]), 0, width - 1).astype(np.int64)
    rows = np.clip(np.round(uv[:, 1]), 0, height - 1).astype(np.int64)
    return image[rows, cols]
