"""Inference backends: OpenVINO and PyTorch give the same scene coordinates and poses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ace_ros.core import device as device_lib
from ace_ros.core.config import LocalizationConfig, mapping_config
from ace_ros.core.localizer import Localizer
from ace_ros.core.mapper import map_frames
from ace_ros.data.synthetic import SyntheticSceneConfig, generate_frames

HEIGHT, WIDTH = 96, 128


@pytest.fixture(scope='module')
def small_map():
    scene = SyntheticSceneConfig(seed=2, width=WIDTH, height=HEIGHT, focal=525 * HEIGHT / 480,
                                 n_train=6, n_test=2, texel_size=0.01)
    frames = list(generate_frames(scene, 'train'))
    cfg = mapping_config('tiny', image_height=HEIGHT, max_iterations=30, device='cpu',
                         encoder='random:0')
    scene_map, _, _ = map_frames(frames, cfg)
    return scene_map, list(generate_frames(scene, 'test'))


def _localizer(scene_map, backend, mixed_precision=True):
    return Localizer(scene_map, LocalizationConfig(
        device='cpu', image_height=HEIGHT, encoder='random:0', backend=backend,
        min_inliers=4, mixed_precision=mixed_precision))


def test_openvino_and_torch_predict_the_same_scene_coordinates(small_map):
    scene_map, frames = small_map
    torch_loc, ov_loc = _localizer(scene_map, 'torch'), _localizer(scene_map, 'openvino')
    fp32_loc = _localizer(scene_map, 'torch', mixed_precision=False)
    assert (torch_loc.backend, ov_loc.backend) == ('torch', 'openvino')
    for frame in frames:
        px_t, pts_t, K_t, _ = torch_loc.predict_scene_coordinates(frame)
        px_o, pts_o, K_o, timings = ov_loc.predict_scene_coordinates(frame)
        pts_exact = fp32_loc.predict_scene_coordinates(frame)[1]
        np.testing.assert_array_equal(px_t, px_o)
        np.testing.assert_array_equal(K_t, K_o)
        # Both run the matrix work in bf16 where the CPU has it natively, else in fp32:
        # OpenVINO is as close to fp32 as torch is.
        ov_error = np.median(np.linalg.norm(pts_o - pts_exact, axis=-1))
        torch_error = np.median(np.linalg.norm(pts_t - pts_exact, axis=-1))
        assert ov_error < 3 * torch_error + 1e-4
        assert timings['encoder'] > 0 and timings['head'] > 0
        result = ov_loc.localize(frame)
        # A grid of cells: cell (i, j) is centred on pixel (8 j + 3.5, 8 i + 3.5).
        assert pts_o.shape[:2] == px_o.shape[:2] and pts_o.shape[2] == 3
        np.testing.assert_array_equal(px_o[1, 2], [8 * 2 + 3.5, 8 * 1 + 3.5])
        assert result.n_cells == pts_o.shape[0] * pts_o.shape[1] and set(result.timings_ms) >= {
            'encoder', 'head', 'ransac', 'total'}


def test_backend_choice():
    cpu = torch.device('cpu')
    assert device_lib.resolve_backend('auto', cpu) == 'openvino'  # installed by setup
    assert device_lib.resolve_backend('Torch', cpu) == 'torch'
    assert device_lib.resolve_backend('auto', torch.device('cuda')) == 'torch'
    with pytest.raises(ValueError, match='CPU only'):
        device_lib.resolve_backend('openvino', torch.device('cuda'))
    with pytest.raises(ValueError, match="'auto', 'torch' or 'openvino'"):
        device_lib.resolve_backend('onnx', cpu)
