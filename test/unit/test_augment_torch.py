"""Tests for ace_ros.core.augment_torch: the batched augmentation agrees with prepare_image."""

from __future__ import annotations

import dataclasses

from ace_ros.core import geometry
from ace_ros.core.augment_torch import augment_batch, draw_batch, to_gray_batch
from ace_ros.core.buffer import AugmentParams, draw_augmentation, prepare_image, to_gray
from ace_ros.core.config import MappingConfig
from ace_ros.core.types import Frame
import cv2
import numpy as np
import pytest
import torch

DEVICES = ['cpu', pytest.param('cuda', marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason='no CUDA device'))]
K0 = np.array([[100.0, 0.0, 63.5], [0.0, 110.0, 47.5], [0.0, 0.0, 1.0]])
WORLD_FROM_CAM = geometry.make_pose(geometry.axis_angle_to_matrix([0.2, -0.3, 0.1]),
                                    [1.0, 2.0, -0.5])
#: Off the principal point (so that a rotation moves its image), inside every augmentation.
POINT_CAM = np.array([0.2, 0.1, 1.0]) * 2.0
POINT_WORLD = geometry.transform_points(WORLD_FROM_CAM, POINT_CAM[None])[0]


def _dot_frame(height: int = 96, width: int = 128, sigma: float = 1.5) -> Frame:
    """Black image with a Gaussian dot centred (sub-pixel) on POINT_WORLD's projection."""
    u, v = geometry.project(POINT_CAM[None], K0)[0]
    ys, xs = np.mgrid[0:height, 0:width]
    blob = 255.0 * np.exp(-((xs - u) ** 2 + (ys - v) ** 2) / (2 * sigma ** 2))
    image = np.repeat(np.round(blob).astype(np.uint8)[:, :, None], 3, axis=2)
    return Frame('dot', image, K0.copy(), WORLD_FROM_CAM.copy())


def _textured_frame(height: int = 96, width: int = 128) -> Frame:
    """Smooth colour texture (little aliasing, so the two resamplings can be compared)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = [128 + 100 * np.sin(xs / 7.0 + c) * np.cos(ys / 9.0 - c) for c in range(3)]
    image = np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8)
    return Frame('texture', image, K0.copy(), WORLD_FROM_CAM.copy())


def _find_dot(gray: np.ndarray) -> np.ndarray:
    """(x, y) intensity-weighted centroid of the brightest blob, OpenCV pixel coordinates."""
    y0, x0 = np.unravel_index(np.argmax(gray), gray.shape)
    window = gray[y0 - 5:y0 + 6, x0 - 5:x0 + 6].astype(np.float64)
    weights = np.clip(window - np.median(gray), 0.0, None)
    ys, xs = np.mgrid[y0 - 5:y0 + 6, x0 - 5:x0 + 6]
    return np.array([(weights * xs).sum(), (weights * ys).sum()]) / weights.sum()


def _expected_dot(K: np.ndarray, cam_from_world: np.ndarray) -> np.ndarray:
    point_cam = geometry.transform_points(cam_from_world, POINT_WORLD[None])
    return geometry.project(point_cam, K)[0]


def _batch(frames, params, target_height, device):
    images = torch.from_numpy(np.stack([f.image for f in frames])).to(device)
    K = np.stack([f.K for f in frames])
    cam_from_world = np.stack([geometry.invert_pose(f.world_from_cam) for f in frames])
    return augment_batch(images, K, cam_from_world, target_height, params=params)


def _draws(cfg, frame, target_height, seeds):
    return [draw_augmentation(np.random.default_rng(s), cfg, frame.width, frame.height,
                              target_height) for s in seeds]


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('target_height,crop', [(96, False), (96, True), (48, False)])
def test_a_dot_lands_where_the_cpu_path_and_the_pose_put_it(device, target_height, crop):
    frame = _dot_frame()
    cfg = MappingConfig(aug_crop=crop, aug_rotation_deg=15.0)
    params = _draws(cfg, frame, target_height, range(8))
    batch = _batch([frame] * len(params), params, target_height, device)
    assert batch.gray.device.type == device
    for i, p in enumerate(params):
        cpu = prepare_image(frame, target_height, params=p)
        mine = batch.item(i)
        assert mine.gray.shape == cpu.gray.shape == p.size
        np.testing.assert_allclose(mine.K, cpu.K)
        np.testing.assert_allclose(mine.cam_from_world, cpu.cam_from_world)
        expected = _expected_dot(mine.K, mine.cam_from_world)
        h, w = p.size
        if not (6 <= expected[0] < w - 6 and 6 <= expected[1] < h - 6):
            continue  # the crop or the rotation moved the dot out of the image
        found = _find_dot(mine.gray)
        assert np.linalg.norm(found - expected) < 1.0, (i, p, found, expected)
        assert np.linalg.norm(found - _find_dot(cpu.gray)) < 1.0, (i, p)


def test_every_draw_of_the_dot_test_is_checked():
    """The dot test is meaningful only if most draws keep the dot inside the image."""
    frame = _dot_frame()
    for target_height, crop in [(96, False), (96, True), (48, False)]:
        params = _draws(MappingConfig(aug_crop=crop), frame, target_height, range(8))
        inside = 0
        for p in params:
            prepared = prepare_image(frame, target_height, params=p)
            x, y = _expected_dot(prepared.K, prepared.cam_from_world)
            h, w = p.size
            inside += 6 <= x < w - 6 and 6 <= y < h - 6
        assert inside >= 6, (target_height, crop, inside)


def test_a_rotation_moves_the_dot_and_the_pose_follows():
    frame = _dot_frame()
    plain = AugmentParams(96, 128)
    turned = dataclasses.replace(plain, augmented=True, angle_rad=np.radians(15.0))
    batch = _batch([frame, frame], [plain, turned], 96, 'cpu')
    dots = [_find_dot(batch.item(i).gray) for i in range(2)]
    assert np.linalg.norm(dots[1] - dots[0]) > 5.0
    for i in range(2):
        item = batch.item(i)
        assert np.linalg.norm(dots[i] - _expected_dot(item.K, item.cam_from_world)) < 1.0


@pytest.mark.parametrize('device', DEVICES)
def test_valid_masks_agree_except_at_their_border(device):
    frame = _textured_frame()
    cfg = MappingConfig(aug_crop=True, aug_rotation_deg=15.0)
    params = _draws(cfg, frame, 96, range(6))
    params[0] = dataclasses.replace(params[0], angle_rad=np.radians(15.0))
    batch = _batch([frame] * len(params), params, 96, device)
    kernel = np.ones((3, 3), np.uint8)
    for i, p in enumerate(params):
        cpu = prepare_image(frame, 96, params=p).valid
        mine = batch.item(i).valid
        band = cv2.dilate(cpu.astype(np.uint8), kernel).astype(bool) & \
            ~cv2.erode(cpu.astype(np.uint8), kernel, borderValue=1).astype(bool)
        assert not ((mine != cpu) & ~band).any(), i
        assert (mine != cpu).mean() < 0.01, i
    assert (~batch.item(0).valid).mean() > 0.05  # 15 degrees pad the corners
    # The canvas beyond a smaller image is invalid.
    for i, (h, w) in enumerate(batch.sizes):
        assert not batch.valid[i, h:].any() and not batch.valid[i, :, w:].any()


@pytest.mark.parametrize('device', DEVICES)
def test_images_agree_with_the_cpu_path(device):
    frame = _textured_frame()
    params = _draws(MappingConfig(aug_crop=True), frame, 96, range(6))
    batch = _batch([frame] * len(params), params, 96, device)
    for i, p in enumerate(params):
        cpu = prepare_image(frame, 96, params=p)
        mine = batch.item(i)
        inner = cv2.erode(cpu.valid.astype(np.uint8), np.ones((5, 5), np.uint8),
                          borderValue=0).astype(bool)
        error = np.abs(mine.gray - cpu.gray)[inner]
        assert error.mean() < 0.01 and error.max() < 0.08, (i, error.mean(), error.max())


def test_brightness_and_contrast_are_applied_as_on_the_cpu():
    frame = _textured_frame()
    base = AugmentParams(96, 128, augmented=True, angle_rad=np.radians(10.0))
    jittered = dataclasses.replace(base, contrast=1.3, brightness=0.8)
    batch = _batch([frame, frame], [base, jittered], 96, 'cpu')
    plain, mine = batch.item(0), batch.item(1)
    mean = plain.gray[plain.valid].mean()
    expected = np.clip(((plain.gray - mean) * 1.3 + mean) * 0.8, 0.0, 1.0)
    np.testing.assert_allclose(mine.gray, expected, atol=1e-5)
    cpu = prepare_image(frame, 96, params=jittered)
    inner = cv2.erode(cpu.valid.astype(np.uint8), np.ones((5, 5), np.uint8),
                      borderValue=0).astype(bool)
    assert np.abs(mine.gray - cpu.gray)[inner].mean() < 0.01
    # The padded corners are jittered too, as on the CPU: 0 becomes mean (1 - c) b, clipped.
    assert np.allclose(mine.gray[~mine.valid], max(0.0, mean * (1 - 1.3) * 0.8), atol=1e-5)


def test_without_augmentation_it_only_resizes():
    frame = _textured_frame()
    images = torch.from_numpy(frame.image[None].copy())
    cam_from_world = geometry.invert_pose(WORLD_FROM_CAM)[None]
    batch = augment_batch(images, K0[None], cam_from_world, 48)
    cpu = prepare_image(frame, 48)
    mine = batch.item(0)
    assert mine.gray.shape == (48, 64) and mine.valid.all()
    np.testing.assert_allclose(mine.K, cpu.K)
    np.testing.assert_allclose(mine.cam_from_world, cpu.cam_from_world)
    # Shrinking by 2 with antialiasing is close to INTER_AREA.
    assert np.abs(mine.gray - cpu.gray).mean() < 0.01
    # The same with augmentation off in the settings.
    off = augment_batch(images, K0[None], cam_from_world, 48, MappingConfig(augment=False),
                        torch.Generator().manual_seed(0))
    assert torch.equal(off.gray, batch.gray)


def test_float_gray_input_matches_rgb_input():
    frame = _textured_frame()
    images = torch.from_numpy(frame.image[None].copy())
    gray = torch.from_numpy(to_gray(frame.image)[None])
    assert (to_gray_batch(images) - gray).abs().max() < 1.0 / 255
    p = [AugmentParams(96, 128, augmented=True, angle_rad=0.1)]
    a = augment_batch(images, K0[None], np.eye(4)[None], 96, params=p)
    b = augment_batch(gray, K0[None], np.eye(4)[None], 96, params=p)
    assert (a.gray - b.gray).abs().max() < 1.0 / 255
    with pytest.raises(ValueError, match='RGB'):
        to_gray_batch(images[..., :2])
    with pytest.raises(ValueError, match='2 augmentation draws'):
        augment_batch(images, K0[None], np.eye(4)[None], 96, params=p * 2)


@pytest.mark.parametrize('device', DEVICES)
def test_draw_batch_follows_the_settings(device):
    cfg = MappingConfig(aug_crop=True, aug_rotation_deg=12.0, aug_contrast=0.2,
                        aug_brightness=0.05)
    draws = draw_batch(400, cfg, 640, 480, 240,
                       torch.Generator(torch.device(device)).manual_seed(3))
    heights = np.array([p.height for p in draws])
    assert heights.min() >= round(240 * cfg.aug_scale_min)
    assert heights.max() <= round(240 * cfg.aug_scale_max)
    assert heights.min() < 170 and heights.max() > 340  # the whole range is drawn
    angles = np.degrees([p.angle_rad for p in draws])
    assert np.abs(angles).max() <= 12.0 and np.abs(angles).max() > 11.0
    assert all(0.8 <= p.contrast <= 1.2 and 0.95 <= p.brightness <= 1.05 for p in draws)
    for p in draws:
        assert p.augmented
        if p.height > 240:
            top, left, h, w = p.crop
            assert (h, w) == (240, 320) and 0 <= top <= p.height - 240
            assert 0 <= left <= p.width - 320
        else:
            assert p.crop is None and p.size == (p.height, p.width)
    again = draw_batch(400, cfg, 640, 480, 240,
                       torch.Generator(torch.device(device)).manual_seed(3))
    assert again == draws


def test_batch_draw_runs_end_to_end_with_a_generator():
    frame = _textured_frame()
    images = torch.from_numpy(np.stack([frame.image] * 3))
    cam_from_world = np.stack([geometry.invert_pose(WORLD_FROM_CAM)] * 3)
    batch = augment_batch(images, np.stack([K0] * 3), cam_from_world, 96, MappingConfig(),
                          torch.Generator().manual_seed(1))
    assert len(batch) == 3 and batch.gray.dtype == torch.float32
    assert batch.gray.shape[1:] == (max(h for h, _ in batch.sizes),
                                    max(w for _, w in batch.sizes))
    assert float(batch.gray.min()) >= 0.0 and float(batch.gray.max()) <= 1.0
