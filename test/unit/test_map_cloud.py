"""Tests for ace_ros.core.map_cloud: which cells become map points, and their colours."""

from __future__ import annotations

from ace_ros.core import geometry
from ace_ros.core.buffer import prepare_image, TrainingBuffer
from ace_ros.core.map_cloud import predict_cloud, UNKNOWN_COLOR
from ace_ros.core.network import cell_centers, HeadConfig
from ace_ros.data.synthetic import generate_frames_with_depth, SyntheticSceneConfig
import numpy as np
import torch

HEIGHT, WIDTH = 120, 160


class _OracleHead(torch.nn.Module):
    """A 'head' that reads each cell's world point from its first three feature channels:
    the cloud's selection and colouring are tested apart from any training."""

    config = HeadConfig(in_channels=512)

    def forward(self, features, context=None, context_index=None):
        return features[:, :3].float()


def _buffer(n_frames: int = 6, names: bool = True) -> tuple:
    """A buffer whose cells' features hold their true world point; (buffer, frames, truth)
    where truth is (size, 3) float32, the true point of each cell. Features are fp16 in the
    buffer, so the room is kept near the origin (fp16 resolution ~2 mm at 4 m)."""
    scene = SyntheticSceneConfig(seed=3, width=WIDTH, height=HEIGHT, focal=525 * HEIGHT / 480,
                                 n_train=n_frames, n_test=0, texel_size=0.01)
    buffer = TrainingBuffer(n_frames * 200, torch.device('cpu'))
    generator = torch.Generator().manual_seed(0)
    centers = cell_centers(HEIGHT, WIDTH).reshape(2, -1).T.numpy().astype(np.float64)
    frames, truth = [], []
    for frame, depth in generate_frames_with_depth(scene, 'train'):
        prepared = prepare_image(frame, HEIGHT)
        u = np.clip(np.round(centers[:, 0]).astype(int), 0, WIDTH - 1)
        v = np.clip(np.round(centers[:, 1]).astype(int), 0, HEIGHT - 1)
        rays = (np.linalg.inv(prepared.K) @ np.c_[centers, np.ones(len(centers))].T).T
        world = geometry.transform_points(frame.world_from_cam, rays * depth[v, u, None])
        features = torch.zeros(512, len(world))
        features[:3] = torch.tensor(world.T, dtype=torch.float32)
        start = buffer.size
        buffer.add_image(prepared, features.reshape(512, HEIGHT // 8, WIDTH // 8), 200,
                         generator, source=frame.name if names else '')
        cells = ((buffer.pixels[start:buffer.size] - 3.5) / 8).round().long()
        truth.append(world[(cells[:, 1] * (WIDTH // 8) + cells[:, 0]).numpy()])
        frames.append(frame)
    return buffer, frames, np.concatenate(truth).astype(np.float32)


def test_points_are_the_predictions_and_colours_their_pixels():
    buffer, frames, truth = _buffer()
    cloud = predict_cloud(_OracleHead(), buffer, frames, mixed_precision=False)
    assert len(cloud) == buffer.size  # every oracle prediction reprojects within 5 px
    # Each point is one cell's prediction (fp16 features: ~mm), each cell at most once.
    distance = np.linalg.norm(cloud.points[:, None] - truth[None], axis=2)
    assert distance.min(axis=1).max() < 0.01
    assert len(np.unique(distance.argmin(axis=1))) == len(cloud)
    # The colours are the frames' pixels at the points' projections: the room's texture,
    # never the placeholder grey of a point without a frame.
    assert len(np.unique(cloud.colors, axis=0)) > 50
    assert not np.all(cloud.colors == UNKNOWN_COLOR, axis=1).any()
    frame = frames[0]
    cam = geometry.transform_points(geometry.invert_pose(frame.world_from_cam),
                                    cloud.points.astype(np.float64))
    uv = cam @ frame.K.T
    uv = np.round(uv[:, :2] / uv[:, 2:3]).astype(int)
    inside = (uv[:, 0] >= 0) & (uv[:, 0] < WIDTH) & (uv[:, 1] >= 0) & (uv[:, 1] < HEIGHT)
    first = np.flatnonzero(inside & (buffer.image_index[distance.argmin(axis=1)].numpy() == 0))
    assert len(first) > 100
    np.testing.assert_array_equal(cloud.colors[first],
                                  frame.image[uv[first, 1], uv[first, 0]])


def test_bad_predictions_are_left_out_and_the_caps_hold():
    buffer, frames, _ = _buffer()
    buffer.features[::2, 0] += 0.5  # every other cell's point 0.5 m off along x
    cloud = predict_cloud(_OracleHead(), buffer, frames, mixed_precision=False)
    # The good half, and the few moved ones whose ray runs nearly along x (they still
    # reproject within 5 px: 5 of 600 here).
    assert buffer.size // 2 <= len(cloud) < 0.55 * buffer.size
    assert predict_cloud(_OracleHead(), buffer, frames, mixed_precision=False,
                         max_error_px=1e-9) is None
    capped = predict_cloud(_OracleHead(), buffer, frames, mixed_precision=False,
                           max_points=100, max_frames=2)
    assert 0 < len(capped) <= 100


def test_frames_are_capped_first_and_last_kept():
    buffer, frames, truth = _buffer()
    cloud = predict_cloud(_OracleHead(), buffer, frames, mixed_precision=False, max_frames=2)
    nearest = np.linalg.norm(cloud.points[:, None] - truth[None], axis=2).argmin(axis=1)
    images = set(buffer.image_index[nearest].tolist())
    assert images == {0, len(frames) - 1}


def test_without_source_names_points_are_grey():
    buffer, frames, _ = _buffer(n_frames=3, names=False)
    cloud = predict_cloud(_OracleHead(), buffer, frames, mixed_precision=False)
    assert len(cloud) == buffer.size
    assert np.all(cloud.colors == UNKNOWN_COLOR)


def test_empty_requests_give_no_cloud():
    buffer, frames, _ = _buffer(n_frames=2)
    assert predict_cloud(_OracleHead(), buffer, frames, max_points=0) is None
    assert predict_cloud(_OracleHead(), TrainingBuffer(10, torch.device('cpu')), frames) is None
