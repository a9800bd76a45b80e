"""Tests of the synthetic scene generator: geometry, consistency, texture, file layout."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ace_ros.core.geometry import invert_pose, pose_error, project, transform_points
from ace_ros.data.ace_layout import AceLayoutSource
from ace_ros.data.synthetic import (generate_frames, generate_frames_with_depth,
                                    SyntheticSceneConfig, write_synthetic_scene)
from ace_ros.data.synthetic_room import SyntheticRoom
from ace_ros.data.texture_atlas import TextureAtlas

TEXEL = 0.01  # coarse textures keep room building fast
W, H = 160, 120


@pytest.fixture(scope='module')
def room() -> SyntheticRoom:
    return SyntheticRoom(seed=0, texel_size=TEXEL)


@pytest.fixture(scope='module')
def K() -> np.ndarray:
    return SyntheticSceneConfig(width=W, height=H, focal=131.25).intrinsics()


def backproject(depth: np.ndarray, K: np.ndarray, world_from_cam: np.ndarray) -> np.ndarray:
    """(H, W) depth -> (H * W, 3) world points."""
    v, u = np.mgrid[:depth.shape[0], :depth.shape[1]]
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    return transform_points(world_from_cam, (rays * depth[..., None]).reshape(-1, 3))


def test_same_seed_same_pixels_other_seed_differs(room: SyntheticRoom, K: np.ndarray) -> None:
    pose = room.trajectory(10)[3]
    image, depth = room.render(pose, K, W, H)
    again, again_depth = SyntheticRoom(seed=0, texel_size=TEXEL).render(pose, K, W, H)
    assert np.array_equal(image, again) and np.array_equal(depth, again_depth)
    other = SyntheticRoom(seed=1, texel_size=TEXEL)
    assert other.size != room.size
    other_image, _ = other.render(other.trajectory(10)[3], K, W, H)
    assert np.abs(other_image.astype(int) - image).mean() > 20


def test_render_outputs(room: SyntheticRoom, K: np.ndarray) -> None:
    image, depth = room.render(room.trajectory(10)[0], K, W, H)
    assert image.shape == (H, W, 3) and image.dtype == np.uint8
    assert depth.shape == (H, W) and depth.dtype == np.float32
    assert np.all(np.isfinite(depth)) and depth.min() > 0.3 and depth.max() < 10


@pytest.mark.parametrize('index', [0, 7, 13])
def test_depth_points_lie_on_surfaces(room: SyntheticRoom, K: np.ndarray, index: int) -> None:
    pose = room.trajectory(20)[index]
    _, depth = room.render(pose, K, W, H)
    points = backproject(depth, K, pose)
    assert room.distance_to_geometry(points).max() < 1e-3


@pytest.mark.parametrize('split_b, index_b', [('train', 1), ('test', 0)])
def test_views_agree(room: SyntheticRoom, K: np.ndarray, split_b: str, index_b: int) -> None:
    """Warp view A into view B with A's depth: depth and colour must match B's render."""
    pose_a = room.trajectory(100)[0]
    pose_b = room.trajectory(100, split_b)[index_b]
    image_a, depth_a = room.render(pose_a, K, W, H)
    image_b, depth_b = room.render(pose_b, K, W, H)
    points_b = transform_points(invert_pose(pose_b), backproject(depth_a, K, pose_a))
    uv = np.round(project(points_b, K)).astype(int)
    ok = ((points_b[:, 2] > 0.1) & (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0)
          & (uv[:, 1] < H))
    assert ok.mean() > 0.5, 'views should overlap'
    rendered_depth = depth_b[uv[ok, 1], uv[ok, 0]]
    visible = np.abs(rendered_depth - points_b[ok, 2]) < 0.01 * points_b[ok, 2]
    assert visible.mean() > 0.9, 'most warped pixels should pass the z-buffer test of view B'
    colour_a = image_a.reshape(-1, 3)[ok][visible].astype(int)
    colour_b = image_b[uv[ok, 1], uv[ok, 0]][visible].astype(int)
    assert np.median(np.abs(colour_a - colour_b)) <= 4


def test_trajectory_poses_valid_and_clear(room: SyntheticRoom) -> None:
    for split in ('train', 'test'):
        poses = np.array(room.trajectory(200, split))
        rotations = poses[:, :3, :3]
        assert np.allclose(rotations @ rotations.transpose(0, 2, 1), np.eye(3), atol=1e-9)
        assert np.allclose(np.linalg.det(rotations), 1.0)
        assert np.allclose(poses[:, 3], [0, 0, 0, 1])
        centres = poses[:, :3, 3]
        assert np.all(np.abs(centres[:, :2]) < np.array(room.size[:2]) / 2)
        assert np.all((centres[:, 2] >= 1.2) & (centres[:, 2] <= 1.8))
        assert room.distance_to_geometry(centres).min() >= 0.5
        assert np.linalg.norm(np.diff(centres, axis=0), axis=1).max() < 0.2, 'smooth path'
    train, test = np.array(room.trajectory(100)), np.array(room.trajectory(100, 'test'))
    gap = np.linalg.norm(train[:, None, :3, 3] - test[None, :, :3, 3], axis=2)
    assert gap.min(0).max() < 0.3 and gap.min(0).mean() > 0.005, 'test lap near, not on, train'
    nearest = gap.argmin(0)
    turns = [pose_error(train[i], pose)[1] for i, pose in zip(nearest, test)]
    assert max(turns) < 30.0, 'test views look the way nearby train views look'


def test_images_textured_and_distinctive(room: SyntheticRoom, K: np.ndarray) -> None:
    image, _ = room.render(room.trajectory(10)[2], K, W, H)
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    assert grey.std() > 15
    patches = np.array([grey[y:y + 16, x:x + 16].ravel()
                        for y in range(0, H - 15, 8) for x in range(0, W - 15, 8)])
    assert np.mean(patches.std(1) > 4) > 0.8, 'few flat 16 px patches'
    centred = patches - patches.mean(1, keepdims=True)
    diff = np.abs(centred[:, None] - centred[None]).mean(2)
    far = np.ones_like(diff, bool)
    coords = np.array([(y, x) for y in range(0, H - 15, 8) for x in range(0, W - 15, 8)])
    far &= np.abs(coords[:, None] - coords[None]).max(2) >= 16  # non-overlapping pairs
    assert np.mean(diff[far] < 2.0) < 0.01, 'distant patches should differ'


def test_generate_frames() -> None:
    cfg = SyntheticSceneConfig(seed=2, width=64, height=48, focal=60.0, focal_y=55.0,
                               n_train=3, n_test=2, texel_size=TEXEL)
    frames = list(generate_frames(cfg, 'test'))
    assert [f.name for f in frames] == ['frame-000000', 'frame-000001']
    assert frames[0].K[0, 0] == 60.0 and frames[0].K[1, 1] == 55.0
    assert frames[1].stamp > frames[0].stamp
    again = next(generate_frames(cfg, 'test'))
    assert np.array_equal(again.image, frames[0].image)
    with pytest.raises(ValueError, match='split'):
        next(generate_frames(cfg, 'val'))


def test_camera_effects_change_image_not_depth() -> None:
    base = SyntheticSceneConfig(seed=2, width=64, height=48, focal=60.0, n_train=2, n_test=0,
                                texel_size=TEXEL)
    clean, depth = next(generate_frames_with_depth(base, 'train'))
    for option in ({'noise_std': 3.0}, {'motion_blur_px': 5.0}, {'defocus_px': 1.5},
                   {'lighting_change': 0.15}):
        cfg = SyntheticSceneConfig(**{**base.__dict__, **option})
        frame, frame_depth = next(generate_frames_with_depth(cfg, 'train'))
        repeat = next(generate_frames(cfg, 'train'))
        assert np.array_equal(frame.image, repeat.image), option
        assert np.array_equal(frame_depth, depth), option
        assert not np.array_equal(frame.image, clean.image), option
        assert np.abs(frame.image.astype(int) - clean.image).mean() < 30, option


def test_write_synthetic_scene(tmp_path) -> None:
    cfg = SyntheticSceneConfig(seed=2, width=64, height=48, focal=60.0, n_train=3, n_test=2,
                               texel_size=TEXEL, write_depth=True)
    root = write_synthetic_scene(tmp_path / 'scene', cfg)
    for split, n in (('train', 3), ('test', 2)):
        for sub, ext in (('rgb', 'png'), ('poses', 'txt'), ('calibration', 'txt'),
                         ('depth', 'png')):
            assert len(list((root / split / sub).glob(f'*.{ext}'))) == n, (split, sub)
        source = AceLayoutSource(root / split)
        written = list(generate_frames_with_depth(cfg, split))
        for frame, (expected, depth) in zip(source, written):
            assert np.array_equal(frame.image, expected.image)
            assert np.allclose(frame.world_from_cam, expected.world_from_cam, atol=1e-8)
            assert np.allclose(frame.K, expected.K)
            stored = cv2.imread(str(root / split / 'depth' / f'{frame.name}.png'),
                                cv2.IMREAD_UNCHANGED)
            assert stored.dtype == np.uint16
            assert np.abs(stored / 1000.0 - depth).max() <= 0.0005 + 1e-6
    with pytest.raises(FileExistsError):
        write_synthetic_scene(root, cfg)


def test_atlas_lookup_returns_texels() -> None:
    rng = np.random.default_rng(0)
    tiles = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((5, 9), (40, 3), (1, 1))]
    atlas = TextureAtlas(tiles)
    for tile, (x0, y0) in zip(tiles, atlas.offsets):
        v, u = np.mgrid[:tile.shape[0], :tile.shape[1]].astype(np.float32)
        got = atlas.sample(u + np.float32(x0), v + np.float32(y0), np.zeros_like(u))
        assert np.array_equal(got, tile)
    flat = TextureAtlas([np.full((64, 64, 3), 77, np.uint8)])
    u = np.full((2, 2), flat.offsets[0, 0] + 30, np.float32)
    coarse = flat.sample(u, u - flat.offsets[0, 0] + flat.offsets[0, 1], np.full_like(u, 2.5))
    assert np.all(coarse == 77), 'every mip level keeps the tile colour'


@pytest.mark.parametrize('kwargs', [
    {'seed': -1}, {'width': 4}, {'height': 100000}, {'focal': 0.0}, {'focal_y': -1.0},
    {'n_train': -1}, {'n_train': 0, 'n_test': 0}, {'texel_size': 0.0}, {'noise_std': -1.0},
    {'motion_blur_px': -1.0}, {'defocus_px': float('nan')}, {'lighting_change': 0.9},
    {'path_fraction': 0.0}, {'path_fraction': 1.5},
])
def test_config_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SyntheticSceneConfig(**kwargs)


def test_render_rejects_bad_input(room: SyntheticRoom, K: np.ndarray) -> None:
    pose = room.trajectory(4)[0]
    outside = pose.copy()
    outside[0, 3] = room.size[0]
    with pytest.raises(ValueError, match='outside the room'):
        room.render(outside, K, W, H)
    skewed = K.copy()
    skewed[0, 1] = 1.0
    with pytest.raises(ValueError, match='K must be'):
        room.render(pose, skewed, W, H)
    with pytest.raises(ValueError, match='shape'):
        room.render(pose[:3], K, W, H)
    with pytest.raises(ValueError, match='split'):
        room.trajectory(4, 'val')
    with pytest.raises(ValueError, match='fraction'):
        room.trajectory(4, fraction=0.0)
    with pytest.raises(ValueError, match='texel_size'):
        SyntheticRoom(0, texel_size=1.0)


@pytest.mark.parametrize('split', ['train', 'test'])
def test_path_fraction_covers_the_start_of_the_loop(room: SyntheticRoom, split: str) -> None:
    # A quarter of the loop with 4 frames is the first 4 of 16 frames over the whole loop,
    # for the test lap too (its frames stay half-way between the train frames).
    quarter = np.array(room.trajectory(4, split, fraction=0.25))
    np.testing.assert_allclose(quarter, np.array(room.trajectory(16, split))[:4], atol=1e-12)
