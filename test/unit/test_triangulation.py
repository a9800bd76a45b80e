"""Triangulated targets: points from matched features land on the true surfaces, reach the
right buffer cells (augmentation included), and make the head converge faster."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from ace_ros.core import geometry
from ace_ros.core.buffer import TrainingBuffer, prepare_image, target_cells, valid_cells
from ace_ros.core.config import mapping_config
from ace_ros.core.loss import target_loss
from ace_ros.core.training import target_weight
from ace_ros.core.network import cell_centers
from ace_ros.core import triangulation
from ace_ros.core.triangulation import (TriangulationSettings, choose_pairs,
                                        triangulate_frames, view_overlap, view_overlaps)
from ace_ros.core.types import Frame
from ace_ros.data.synthetic import SyntheticSceneConfig, cached_room, generate_frames

CPU = torch.device('cpu')


@pytest.fixture(scope='module')
def loop_frames():
    # A full lap of the room: every wall, as a robot's mapping drive sees it.
    scene = SyntheticSceneConfig(seed=3, width=320, height=240, focal=262.5, n_train=48,
                                 n_test=0, noise_std=2.0)
    return scene, list(generate_frames(scene, 'train'))


def test_triangulated_points_land_on_the_rooms_true_surfaces(loop_frames):
    scene, frames = loop_frames
    result = triangulate_frames(frames, TriangulationSettings(image_height=240))
    points = np.concatenate([p.world for p in result.points]).astype(np.float64)
    distance = cached_room(scene.seed, scene.texel_size).distance_to_geometry(points)
    with_points = sum(len(p.world) > 0 for p in result.points)
    assert with_points >= 0.9 * len(frames)
    assert len(points) >= 50 * len(frames), f'{len(points)} points'
    assert np.mean(distance < 0.02) > 0.85, f'{np.mean(distance < 0.02):.2f} within 2 cm'
    assert np.median(distance) < 0.005
    # Each frame's pixels see its points: they project back within the reprojection bound.
    for frame, found in zip(frames, result.points):
        cam = geometry.transform_points(geometry.invert_pose(frame.world_from_cam),
                                        found.world.astype(np.float64))
        error = np.linalg.norm(geometry.project(cam, frame.K) - found.pixels, axis=1)
        assert np.all(error < 1.6)


def test_pairs_look_the_same_way_and_have_a_baseline():
    K = np.array([[100.0, 0, 50], [0, 100.0, 50], [0, 0, 1]])
    image = np.zeros((100, 100, 3), np.uint8)

    def frame(x: float, yaw_deg: float) -> Frame:
        pose = geometry.make_pose(geometry.axis_angle_to_matrix([0, np.radians(yaw_deg), 0]),
                                  [x, 0, 0])
        return Frame(f'{x}-{yaw_deg}', image, K, pose)

    # 0 and 1 share a view 0.1 m apart; 2 stands where 0 does; 3 looks the other way.
    frames = [frame(0, 0), frame(0.1, 5), frame(0, 0), frame(0.05, 180)]
    pairs = choose_pairs(frames, TriangulationSettings())
    assert (0, 1) in pairs and (1, 2) in pairs
    assert (0, 2) not in pairs
    assert not any(3 in pair for pair in pairs)


def test_view_overlaps_match_projecting_each_grid_point_one_by_one():
    # Frames with their own K and image size: the vectorised pass must use each one's own.
    rng = np.random.default_rng(1)
    a = Frame('a', np.zeros((100, 120, 3), np.uint8),
              np.array([[90.0, 0, 60], [0, 90.0, 50], [0, 0, 1]]), np.eye(4))
    others = []
    for i in range(12):
        w, h = (160, 120) if i % 2 else (80, 60)
        K = np.array([[rng.uniform(60, 200), 0, w / 2], [0, rng.uniform(60, 200), h / 2],
                      [0, 0, 1]])
        pose = geometry.make_pose(geometry.axis_angle_to_matrix(rng.normal(0, 0.5, 3)),
                                  rng.normal(0, 0.5, 3))
        others.append(Frame(str(i), np.zeros((h, w, 3), np.uint8), K, pose))

    def one_by_one(b: Frame) -> float:
        seen = []
        for d in (1.0, 2.0, 4.0):
            for v in np.linspace(0.1, 0.9, 5) * a.height:
                for u in np.linspace(0.1, 0.9, 5) * a.width:
                    world = a.world_from_cam @ np.r_[d * np.linalg.solve(a.K, [u, v, 1.0]), 1]
                    cam = np.linalg.inv(b.world_from_cam) @ world
                    x, y = (b.K @ cam[:3])[:2] / cam[2]
                    seen.append(cam[2] > 0.1 and 0 <= x < b.width and 0 <= y < b.height)
        return float(np.mean(seen))

    expected = [one_by_one(b) for b in others]
    assert len(set(expected)) > 3  # the poses give a range of overlaps, not all 0 or 1
    np.testing.assert_allclose(view_overlaps(a, others), expected)
    assert view_overlap(a, others[3]) == expected[3]
    assert view_overlaps(a, []).shape == (0,)


def test_triangulation_gives_the_same_points_on_one_thread_or_several(loop_frames,
                                                                      monkeypatch):
    _, frames = loop_frames
    settings = TriangulationSettings(image_height=240)
    monkeypatch.setattr(triangulation, '_workers', lambda: 3)
    several = triangulate_frames(frames[:16], settings)
    monkeypatch.setattr(triangulation, '_workers', lambda: 1)
    one = triangulate_frames(frames[:16], settings)
    assert several.total > 0 and several.pairs == one.pairs
    for a, b in zip(several.points, one.points):
        np.testing.assert_array_equal(a.world, b.world)
        np.testing.assert_array_equal(a.pixels, b.pixels)


def _augmented_view(name: str, seed: int) -> tuple:
    """A 160x120 posed frame and its augmented encoder input (scaled, rotated)."""
    K = np.array([[200.0, 0, 79.5], [0, 200.0, 59.5], [0, 0, 1]])
    world_from_cam = geometry.make_pose(geometry.axis_angle_to_matrix([0.1, 0.2, 0.0]),
                                        [0.5, -0.2, 1.0])
    frame = Frame(name, np.full((120, 160, 3), 128, np.uint8), K, world_from_cam)
    cfg = mapping_config('tiny', image_height=120)
    return frame, prepare_image(frame, 120, np.random.default_rng(seed), cfg)


def test_targets_reach_the_cells_that_see_them_after_augmentation():
    frame, prepared = _augmented_view('f', 4)
    world_from_cam = frame.world_from_cam
    rng = np.random.default_rng(0)
    cam_points = np.c_[rng.uniform(-0.5, 0.5, (40, 2)), rng.uniform(1.5, 3.0, 40)]
    world = geometry.transform_points(world_from_cam, cam_points)
    valid = valid_cells(prepared.valid)
    cells, targets = target_cells(prepared, world, valid)
    assert len(cells) >= 20
    centres = cell_centers(*prepared.gray.shape).reshape(2, -1).T.numpy()
    target_cam = geometry.transform_points(prepared.cam_from_world, targets.astype(np.float64))
    # Each target sits on its cell centre's ray ...
    np.testing.assert_allclose(geometry.project(target_cam, prepared.K), centres[cells],
                               atol=1e-3)
    # ... at the depth of a point whose projection falls in that cell.
    projected = geometry.project(
        geometry.transform_points(prepared.cam_from_world, world), prepared.K)
    for cell, depth in zip(cells, target_cam[:, 2]):
        inside = np.all(np.abs(projected - centres[cell]) <= 4.0, axis=1)
        point_depth = geometry.transform_points(prepared.cam_from_world, world[inside])[:, 2]
        assert np.isclose(point_depth, depth, atol=1e-4).any()


def test_buffer_samples_target_cells_first_up_to_half():
    K = np.array([[200.0, 0, 79.5], [0, 200.0, 59.5], [0, 0, 1]])
    frame = Frame('f', np.full((120, 160, 3), 128, np.uint8), K, np.eye(4))
    prepared = prepare_image(frame, 120)
    features = torch.randn(512, 15, 20)
    rng = np.random.default_rng(1)
    world = np.c_[rng.uniform(-0.3, 0.3, (30, 2)), np.full(30, 2.0)]
    buffer = TrainingBuffer(1000, CPU)
    n = buffer.add_image(prepared, features, 40, torch.Generator().manual_seed(0), world)
    with_target = int((~torch.isnan(buffer.targets[:n, 0])).sum())
    assert n == 40 and with_target == 20
    buffer.add_image(prepared, features, 40, torch.Generator().manual_seed(0))
    assert torch.isnan(buffer.targets[n:2 * n]).all()


def test_target_loss_is_zero_at_the_target_in_pixels_and_skips_cells_without_one():
    targets = torch.tensor([[0.0, 0.0, 2.0], [float('nan')] * 3, [1.0, 0.0, 4.0]])
    cam_from_world = torch.eye(4)[:3].expand(3, 3, 4)
    K = torch.tensor([[100.0, 0, 0], [0, 100.0, 0], [0, 0, 1]]).expand(3, 3, 3)
    assert target_loss(targets.nan_to_num(0.0), targets, cam_from_world, K) == 0.0
    off = targets.nan_to_num(0.0) + torch.tensor([0.02, 0.0, 0.0])
    # 2 cm at 2 m and 4 m with f = 100: 1 px and 0.5 px.
    assert float(target_loss(off, targets, cam_from_world, K)) == pytest.approx(1.5, rel=1e-4)
    # Along the depth axis an error counts the same.
    deeper = targets.nan_to_num(0.0) + torch.tensor([0.0, 0.0, 0.02])
    loss = float(target_loss(deeper, targets, cam_from_world, K))
    assert loss == pytest.approx(1.5, rel=1e-4)
    none = torch.full((3, 3), float('nan'))
    assert float(target_loss(off, none, cam_from_world, K)) == 0.0


def test_target_weight_fades_out_by_its_share_of_training():
    assert target_weight(0.0, 1.0, 0.6) == 1.0
    assert target_weight(0.3, 1.0, 0.6) == 1.0
    assert target_weight(0.45, 2.0, 0.6) == pytest.approx(1.0)
    assert target_weight(0.6, 1.0, 0.6) == 0.0
    assert target_weight(0.9, 1.0, 0.6) == 0.0


def test_targets_attach_to_cells_encoded_before_the_points_existed():
    """Online mapping encodes keyframes as they arrive and triangulates at ~/finish: the
    cells already sampled get their targets afterwards, on their cell centre's ray."""
    frame, prepared = _augmented_view('kf-7', 3)
    K, world_from_cam = frame.K, frame.world_from_cam
    buffer = TrainingBuffer(1000, CPU)
    rows, cols = valid_cells(prepared.valid).shape
    buffer.add_image(prepared, torch.randn(512, rows, cols), 150,
                     torch.Generator().manual_seed(0), source=frame.name)
    assert torch.isnan(buffer.targets[:buffer.size]).all()
    rng = np.random.default_rng(0)
    cam_points = np.c_[rng.uniform(-0.6, 0.6, (400, 2)), rng.uniform(1.5, 3.0, 400)]
    world = geometry.transform_points(world_from_cam, cam_points)
    from ace_ros.core.mapper import Mapper
    from ace_ros.core.triangulation import FramePoints
    other = Frame('kf-8', frame.image, K, world_from_cam)
    attached = Mapper.attach_targets(
        buffer, [other, frame], [FramePoints(np.zeros((0, 2), np.float32), world[:0]),
                                 FramePoints(np.zeros((400, 2), np.float32), world)])
    has = ~torch.isnan(buffer.targets[:buffer.size, 0])
    assert attached == int(has.sum()) >= 40
    targets = buffer.targets[:buffer.size][has].double().numpy()
    cam = geometry.transform_points(prepared.cam_from_world, targets)
    np.testing.assert_allclose(geometry.project(cam, prepared.K),
                               buffer.pixels[:buffer.size][has].numpy(), atol=1e-3)
    assert np.all((cam[:, 2] > 1.4) & (cam[:, 2] < 3.1))


def test_sift_descriptors_are_kept_as_uint8_without_loss(loop_frames):
    # Frames wait for matching with their descriptors as uint8; that is exact only while
    # OpenCV's float32 SIFT values are whole numbers in 0..255.
    _, frames = loop_frames
    sift = cv2.SIFT_create(nfeatures=500)
    gray = cv2.cvtColor(frames[0].image, cv2.COLOR_RGB2GRAY)
    _, as_float = sift.detectAndCompute(gray, None)
    _, kept = triangulation._detect(frames[0], sift, frames[0].height)
    assert kept.dtype == np.uint8 and len(kept) == len(as_float) > 100
    np.testing.assert_array_equal(kept.astype(np.float32), as_float)
