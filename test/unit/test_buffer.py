"""Tests for ace_ros.core.buffer: valid cells, image preparation/augmentation, the buffer."""

from __future__ import annotations

from typing import Tuple

from ace_ros.core import geometry
from ace_ros.core.buffer import encode, EncoderInput, prepare_image, to_gray, TrainingBuffer, \
    valid_cells
from ace_ros.core.config import MappingConfig
from ace_ros.core.network import Encoder
from ace_ros.core.types import Frame
from ace_ros.core.weights import random_encoder_state
import cv2
import numpy as np
import pytest
import torch

CPU = torch.device('cpu')
# A camera looking at a point that is well away from the principal point, so that an
# in-plane rotation moves its image by many pixels.
K0 = np.array([[100.0, 0.0, 63.5], [0.0, 100.0, 47.5], [0.0, 0.0, 1.0]])
WORLD_FROM_CAM = geometry.make_pose(geometry.axis_angle_to_matrix([0.2, -0.3, 0.1]),
                                    [1.0, 2.0, -0.5])
POINT_CAM = np.array([0.4, 0.25, 1.0]) * 2.0
POINT_WORLD = geometry.transform_points(WORLD_FROM_CAM, POINT_CAM[None])[0]


def _dot_frame(height: int = 96, width: int = 128, sigma: float = 1.5) -> Frame:
    """Black image with a Gaussian dot centred (sub-pixel) on POINT_WORLD's projection."""
    u, v = geometry.project(POINT_CAM[None], K0)[0]
    ys, xs = np.mgrid[0:height, 0:width]
    blob = 255.0 * np.exp(-((xs - u) ** 2 + (ys - v) ** 2) / (2 * sigma ** 2))
    image = np.repeat(np.round(blob).astype(np.uint8)[:, :, None], 3, axis=2)
    return Frame('dot', image, K0.copy(), WORLD_FROM_CAM.copy())


def _find_dot(gray: np.ndarray) -> np.ndarray:
    """(x, y) intensity-weighted centroid of the brightest blob, OpenCV pixel coordinates."""
    y0, x0 = np.unravel_index(np.argmax(gray), gray.shape)
    window = gray[y0 - 4:y0 + 5, x0 - 4:x0 + 5].astype(np.float64)
    weights = np.clip(window - np.median(gray), 0.0, None)
    ys, xs = np.mgrid[y0 - 4:y0 + 5, x0 - 4:x0 + 5]
    return np.array([(weights * xs).sum(), (weights * ys).sum()]) / weights.sum()


def _expected_dot(prepared: EncoderInput) -> np.ndarray:
    point_cam = geometry.transform_points(prepared.cam_from_world, POINT_WORLD[None])
    return geometry.project(point_cam, prepared.K)[0]


def test_valid_cells_needs_the_whole_block():
    mask = np.ones((16, 24), dtype=bool)
    mask[9, 21] = False      # one pixel in cell (1, 2)
    mask[0:8, 0:7] = False   # cell (0, 0) almost entirely invalid, last column valid
    mask[0:8, 15] = True
    expected = np.ones((2, 3), dtype=bool)
    expected[1, 2] = False
    expected[0, 0] = False
    np.testing.assert_array_equal(valid_cells(mask), expected)


def test_valid_cells_partial_blocks_are_invalid():
    # 10 x 20 pixels -> 2 x 3 cells; the partly covered last row/column are not valid.
    cells = valid_cells(np.ones((10, 20), dtype=bool))
    np.testing.assert_array_equal(cells, [[True, True, False], [False, False, False]])
    assert valid_cells(np.zeros((16, 16), dtype=bool)).sum() == 0
    assert valid_cells(np.ones((16, 16), dtype=bool)).all()


def test_prepare_image_without_rng_only_resizes():
    frame = _dot_frame()
    prepared = prepare_image(frame, 48)
    assert prepared.gray.shape == (48, 64)
    assert prepared.gray.dtype == np.float32
    np.testing.assert_allclose(prepared.K, geometry.scale_intrinsics(K0, 0.5, 0.5))
    np.testing.assert_allclose(prepared.cam_from_world, geometry.invert_pose(WORLD_FROM_CAM))
    assert prepared.valid.all()
    expected = to_gray(cv2.resize(frame.image, (64, 48), interpolation=cv2.INTER_AREA))
    np.testing.assert_array_equal(prepared.gray, expected)
    # The dot lands where the scaled intrinsics project it.
    np.testing.assert_allclose(_find_dot(prepared.gray), _expected_dot(prepared), atol=0.3)


def test_prepare_image_rng_without_cfg_or_with_augment_off_does_not_augment():
    frame = _dot_frame()
    plain = prepare_image(frame, 96)
    for cfg in (None, MappingConfig(augment=False)):
        prepared = prepare_image(frame, 96, np.random.default_rng(0), cfg)
        np.testing.assert_array_equal(prepared.gray, plain.gray)
        np.testing.assert_array_equal(prepared.K, plain.K)
        np.testing.assert_array_equal(prepared.cam_from_world, plain.cam_from_world)
        assert prepared.valid.all()


def test_prepare_image_unknown_pose_is_identity():
    frame = _dot_frame()
    frame.world_from_cam = None
    np.testing.assert_array_equal(prepare_image(frame, 48).cam_from_world, np.eye(4))


def _augmented(seed: int, cfg: MappingConfig = MappingConfig()
               ) -> Tuple[EncoderInput, EncoderInput]:
    frame = _dot_frame()
    return prepare_image(frame, 96), prepare_image(frame, 96, np.random.default_rng(seed), cfg)


@pytest.mark.parametrize('seed', range(6))
def test_augmentation_warp_and_pose_agree(seed):
    plain, prepared = _augmented(seed)
    rotation = prepared.cam_from_world[:3, :3] @ plain.cam_from_world[:3, :3].T
    # The pose changes only by an in-plane rotation about the optical axis.
    np.testing.assert_allclose(rotation[2], [0.0, 0.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(prepared.cam_from_world[:3, 3],
                               rotation @ plain.cam_from_world[:3, 3], atol=1e-12)
    expected = _expected_dot(prepared)
    assert 0 <= expected[0] < prepared.gray.shape[1] and 0 <= expected[1] < prepared.gray.shape[0]
    np.testing.assert_allclose(_find_dot(prepared.gray), expected, atol=0.5)


def test_augmentation_rotation_is_large_enough_to_matter():
    # Guards the test above: with these seeds the rotation moves the dot by several
    # pixels, so a pose rotated the wrong way would miss it.
    angles, moved = [], []
    for seed in range(6):
        plain, prepared = _augmented(seed)
        _, angle = geometry.pose_error(prepared.cam_from_world, plain.cam_from_world)
        angles.append(angle)
        unrotated = prepared.K @ geometry.invert_pose(prepared.cam_from_world)[:3, :3] \
            @ np.linalg.inv(prepared.K)
        back = unrotated @ np.append(_find_dot(prepared.gray), 1.0)
        moved.append(np.linalg.norm(back[:2] / back[2] - _find_dot(prepared.gray)))
    assert max(angles) > 8.0
    assert all(a <= 15.0 + 1e-9 for a in angles)
    assert max(moved) > 5.0


def test_augmentation_marks_padded_corners_invalid():
    cfg = MappingConfig(aug_rotation_deg=15.0, aug_scale_min=1.0, aug_scale_max=1.0)
    for seed in range(4):
        _, prepared = _augmented(seed, cfg)
        h, w = prepared.valid.shape
        homography = prepared.K @ prepared.cam_from_world[:3, :3] \
            @ geometry.invert_pose(WORLD_FROM_CAM)[:3, :3].T @ np.linalg.inv(prepared.K)
        ys, xs = np.mgrid[0:h, 0:w]
        pix = np.stack([xs.ravel(), ys.ravel(), np.ones(h * w)])
        src = np.linalg.inv(homography) @ pix
        sx, sy = (src[:2] / src[2]).reshape(2, h, w)
        inside = (sx > 0.5) & (sx < w - 1.5) & (sy > 0.5) & (sy < h - 1.5)
        outside = (sx < -1.5) | (sx > w + 0.5) | (sy < -1.5) | (sy > h + 0.5)
        assert prepared.valid[inside].all()
        assert not prepared.valid[outside].any()
        if outside.any():
            assert not valid_cells(prepared.valid).all()


def test_augmentation_scale_range_and_intrinsics():
    frame = _dot_frame(48, 64)
    cfg = MappingConfig()
    heights = []
    for seed in range(30):
        prepared = prepare_image(frame, 48, np.random.default_rng(seed), cfg)
        h, w = prepared.gray.shape
        heights.append(h)
        assert round(48 * cfg.aug_scale_min) <= h <= round(48 * cfg.aug_scale_max)
        assert w == round(64 * h / 48)
        assert prepared.valid.shape == (h, w)
        np.testing.assert_allclose(prepared.K, geometry.scale_intrinsics(K0, w / 64, h / 48))
        assert prepared.gray.min() >= 0.0 and prepared.gray.max() <= 1.0
    assert min(heights) < 48 < max(heights)


def test_crop_augmentation_keeps_the_unscaled_size_and_the_geometry():
    """Scaled up and cropped back to 96x128: the dot lands where the cropped K and the
    rotated pose project it, and some crops move the principal point."""
    cfg = MappingConfig(aug_scale_min=1.3, aug_scale_max=1.5, aug_crop=True)
    shifts, checked = [], 0
    for seed in range(12):
        _, prepared = _augmented(seed, cfg)
        assert prepared.gray.shape == prepared.valid.shape == (96, 128)
        scale = prepared.K[1, 1] / K0[1, 1]
        assert 1.3 - 0.02 <= scale <= 1.5 + 0.02
        expected = _expected_dot(prepared)
        if (8 <= expected).all() and expected[0] < 120 and expected[1] < 88:
            np.testing.assert_allclose(_find_dot(prepared.gray), expected, atol=0.6)
            checked += 1
        else:  # cropped away
            assert prepared.gray.max() < 0.5
        shifts.append(np.linalg.norm(prepared.K[:2, 2] - K0[:2, 2] * scale))
    assert max(shifts) > 5.0 and checked >= 4
    # Without aug_crop the same scales make bigger images.
    _, uncropped = _augmented(0, MappingConfig(aug_scale_min=1.3, aug_scale_max=1.5))
    assert uncropped.gray.shape[0] > 96


def test_augmentation_is_deterministic_for_a_seed():
    _, a = _augmented(3)
    _, b = _augmented(3)
    _, c = _augmented(4)
    np.testing.assert_array_equal(a.gray, b.gray)
    np.testing.assert_array_equal(a.cam_from_world, b.cam_from_world)
    assert not np.array_equal(a.cam_from_world, c.cam_from_world)


def _encoded(height: int = 32, width: int = 48, valid_width: int = 24) -> EncoderInput:
    valid = np.zeros((height, width), dtype=bool)
    valid[:, :valid_width] = True
    gray = np.random.default_rng(0).uniform(size=(height, width)).astype(np.float32)
    return EncoderInput(gray, K0.copy(), geometry.invert_pose(WORLD_FROM_CAM), valid)


def _features(c: int = 8, h: int = 4, w: int = 6) -> torch.Tensor:
    return torch.randn(c, h, w, generator=torch.Generator().manual_seed(1))


def test_add_image_samples_only_valid_cells_at_cell_centres():
    buffer = TrainingBuffer(100, CPU, feature_dim=8)
    encoded = _encoded(valid_width=24)  # cells j = 0, 1, 2 of 6 are valid: 12 cells
    n = buffer.add_image(encoded, _features(), max_samples=100,
                         generator=torch.Generator().manual_seed(0))
    assert n == 12 and buffer.size == 12 and buffer.n_images == 1
    pixels = buffer.pixels[:n].numpy()
    assert (pixels[:, 0] < 24).all()
    expected = {(8 * j + 3.5, 8 * i + 3.5) for i in range(4) for j in range(3)}
    assert {tuple(p) for p in pixels.tolist()} == expected
    assert (buffer.image_index[:n] == 0).all()


def test_add_image_unaligned_valid_region():
    buffer = TrainingBuffer(100, CPU, feature_dim=8)
    n = buffer.add_image(_encoded(valid_width=20), _features(), 100,
                         torch.Generator().manual_seed(0))
    assert n == 8  # cell column 2 covers x = 16..23 and is only partly valid
    assert (buffer.pixels[:n, 0] <= 11.5).all()


def test_add_image_respects_max_samples_without_duplicates():
    buffer = TrainingBuffer(100, CPU, feature_dim=8)
    n = buffer.add_image(_encoded(valid_width=48), _features(), max_samples=5,
                         generator=torch.Generator().manual_seed(0))
    assert n == 5 and buffer.size == 5
    assert len({tuple(p) for p in buffer.pixels[:5].tolist()}) == 5


def test_add_image_respects_capacity():
    buffer = TrainingBuffer(20, CPU, feature_dim=8)
    gen = torch.Generator().manual_seed(0)
    assert buffer.add_image(_encoded(), _features(), 100, gen) == 12
    assert not buffer.full
    assert buffer.add_image(_encoded(), _features(), 100, gen) == 8
    assert buffer.full and buffer.size == 20
    assert buffer.add_image(_encoded(), _features(), 100, gen) == 0
    assert buffer.n_images == 2
    assert buffer.image_index.tolist() == [0] * 12 + [1] * 8


def test_add_image_stores_the_features_of_the_sampled_cells():
    buffer = TrainingBuffer(100, CPU, feature_dim=8)
    features = _features()
    n = buffer.add_image(_encoded(valid_width=48), features, 10,
                         torch.Generator().manual_seed(2))
    for k in range(n):
        x, y = buffer.pixels[k].tolist()
        i, j = int((y - 3.5) / 8), int((x - 3.5) / 8)
        torch.testing.assert_close(buffer.features[k], features[:, i, j].half(),
                                   rtol=0, atol=0)


def test_buffer_with_real_encoder_features():
    encoder = Encoder()
    encoder.load_state_dict(random_encoder_state(0))
    encoder.eval()
    encoded = _encoded(valid_width=48)
    features = encode(encoder, encoded.gray, CPU, mixed_precision=False)
    assert features.shape == (512, 4, 6)
    buffer = TrainingBuffer(50, CPU)
    n = buffer.add_image(encoded, features, 7, torch.Generator().manual_seed(3))
    assert n == 7
    for k in range(n):
        x, y = buffer.pixels[k].tolist()
        i, j = int((y - 3.5) / 8), int((x - 3.5) / 8)
        torch.testing.assert_close(buffer.features[k], features[:, i, j].half(),
                                   rtol=0, atol=0)


def test_geometry_tables():
    buffer = TrainingBuffer(100, CPU, feature_dim=8)
    first, second = _encoded(), _encoded()
    second.K = K0 * np.array([[2.0], [2.0], [1.0]])
    gen = torch.Generator().manual_seed(0)
    buffer.add_image(first, _features(), 3, gen)
    buffer.add_image(second, _features(), 3, gen)
    cam_from_world, K, K_inv = buffer.geometry_tables()
    assert cam_from_world.shape == (2, 3, 4) and K.shape == (2, 3, 3)
    np.testing.assert_allclose(cam_from_world[0].numpy(), first.cam_from_world[:3], rtol=1e-6)
    np.testing.assert_allclose(K[1].numpy(), second.K, rtol=1e-6)
    torch.testing.assert_close(K @ K_inv, torch.eye(3).expand(2, 3, 3), atol=1e-5, rtol=0)
    # features, pixels, image index and the triangulated targets (3 float32, NaN when none)
    assert buffer.nbytes() == 100 * 8 * 2 + 100 * 2 * 4 + 100 * 4 + 100 * 3 * 4
