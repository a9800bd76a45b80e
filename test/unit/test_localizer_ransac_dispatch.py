"""Which RANSAC the localizer runs: torch on the head's device off the CPU, numpy on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ace_ros.core import geometry, localizer as localizer_module
from ace_ros.core.config import LocalizationConfig
from ace_ros.core.localizer import Localizer, pose_errors
from ace_ros.core.mapfile import SceneMap
from ace_ros.core.network import cell_centers, Head, HeadConfig
from ace_ros.core.runtime import Runtime
from ace_ros.core.types import Frame
from ace_ros.core.weights import build_encoder

K = np.array([[100.0, 0.0, 79.5], [0.0, 100.0, 59.5], [0.0, 0.0, 1.0]])
DEVICES = ['cpu', pytest.param('cuda', marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason='no CUDA device'))]


def _localizer(device: str) -> Localizer:
    """A localizer of a random head whose predictions the tests replace."""
    encoder, sha, _ = build_encoder('random:0', torch.device(device))
    head = Head(HeadConfig(channels=32, in_channels=512))
    scene_map = SceneMap(head.weights(), torch.zeros(3), sha, head.config.to_dict(), 'map',
                         mapping_config={'image_height': 120})
    return Localizer(scene_map, LocalizationConfig(device=device, backend='torch'),
                     Runtime(torch.device(device), encoder, sha))


def _query(device: str):
    """A 160 x 120 frame and a head output for it: (300, 3) float32 world points of a
    slanted wall, computed in inference mode as a head's are, on `device`."""
    world_from_cam = geometry.make_pose(
        geometry.axis_angle_to_matrix(np.array([0.1, -0.4, 0.2])), np.array([0.5, -1.0, 2.0]))
    frame = Frame('q', np.zeros((120, 160, 3), np.uint8), K, world_from_cam)
    centers = cell_centers(120, 160).reshape(2, -1).T.numpy().astype(np.float64)
    rays = np.c_[centers, np.ones(len(centers))] @ np.linalg.inv(K).T
    points = geometry.transform_points(world_from_cam, rays * (2.0 + centers[:, :1] / 160))
    with torch.inference_mode():
        head_output = torch.tensor(points, dtype=torch.float32, device=device)
    return frame, head_output


def _recording(monkeypatch, name: str) -> list:
    """Replace `localizer_module.<name>` by a wrapper that records its calls' arguments."""
    calls, original = [], getattr(localizer_module, name)

    def wrapper(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)
    monkeypatch.setattr(localizer_module, name, wrapper)
    return calls


@pytest.mark.parametrize('device', DEVICES)
def test_torch_ransac_runs_on_the_heads_output(device: str, monkeypatch) -> None:
    localizer = _localizer(device)
    assert localizer.ransac_on_device is (device != 'cpu')
    localizer.ransac_on_device = True  # forced on the CPU
    frame, head_output = _query(device)
    localizer._predicts = [lambda features: head_output]
    torch_calls = _recording(monkeypatch, 'ransac_pnp_torch')
    numpy_calls = _recording(monkeypatch, 'ransac_pnp')
    result = localizer.localize(frame)
    assert len(torch_calls) == 1 and not numpy_calls
    points = torch_calls[0][1]
    # The head's own tensor, not a copy back from the host.
    assert points.device == head_output.device
    assert points.data_ptr() == head_output.data_ptr()
    assert result.success, result.reason
    assert result.inlier_count == result.n_cells == 300
    t_err, r_err = pose_errors(result, frame.world_from_cam)
    assert t_err < 0.01 and r_err < 0.5, (t_err, r_err)


def test_numpy_ransac_on_the_cpu_by_default(monkeypatch) -> None:
    localizer = _localizer('cpu')
    frame, head_output = _query('cpu')
    localizer._predicts = [lambda features: head_output]
    torch_calls = _recording(monkeypatch, 'ransac_pnp_torch')
    numpy_calls = _recording(monkeypatch, 'ransac_pnp')
    result = localizer.localize(frame)
    assert len(numpy_calls) == 1 and not torch_calls
    assert result.success and pose_errors(result, frame.world_from_cam)[0] < 0.01
