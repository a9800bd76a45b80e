"""A mapper on a GPU augments its buffer's images on the device (augment_torch) in batches;
here the same path is forced on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ace_ros.core import geometry
from ace_ros.core.config import mapping_config
from ace_ros.core.mapper import Mapper
from ace_ros.core.runtime import make_runtime
from ace_ros.data.synthetic import generate_frames, SyntheticSceneConfig

SCENE = SyntheticSceneConfig(seed=2, width=160, height=120, focal=40.0, n_train=6, n_test=0)


@pytest.fixture(scope='module')
def frames():
    return list(generate_frames(SCENE, 'train'))


def _filled(frames, on_device: bool, **overrides):
    cfg = mapping_config('tiny', device='cpu', encoder='random:0', image_height=120,
                         encoder_precision='float', max_buffer_passes=2,
                         samples_per_image=64, **overrides)
    mapper = Mapper(cfg, make_runtime('cpu', 'random:0'))
    mapper.augment_on_device = on_device
    return mapper.fill_buffer(frames)


def test_the_device_path_fills_the_buffer_with_the_frames_as_drawn(frames) -> None:
    buffer = _filled(frames, on_device=True)
    assert buffer.n_images == 2 * len(frames) and buffer.size == 2 * len(frames) * 64
    assert sorted(buffer.sources) == sorted(2 * [f.name for f in frames])
    cam_from_world, K, _ = buffer.geometry_tables()
    by_name = {f.name: f for f in frames}
    cfg = mapping_config('tiny')
    for image, name in enumerate(buffer.sources):
        frame = by_name[name]
        stored = np.eye(4)
        stored[:3] = cam_from_world[image].numpy()
        # The pose turned about the optical axis only: same centre, same viewing direction.
        world_from_stored = geometry.invert_pose(stored)
        assert np.allclose(world_from_stored[:3, 3], frame.world_from_cam[:3, 3], atol=1e-5)
        assert np.allclose(world_from_stored[:3, 2], frame.world_from_cam[:3, 2], atol=1e-5)
        turn = np.degrees(np.arccos(np.clip(
            world_from_stored[:3, 0] @ frame.world_from_cam[:3, 0], -1, 1)))
        assert turn <= cfg.aug_rotation_deg + 1e-3
        scale = float(K[image, 1, 1]) / frame.K[1, 1]
        assert cfg.aug_scale_min - 0.02 <= scale <= cfg.aug_scale_max + 0.02
    turns = {round(float(cam_from_world[i, 0, 1]), 4) for i in range(buffer.n_images)}
    assert len(turns) > 1, 'every image got the same draw'


def test_without_augmentation_both_paths_give_the_same_buffer(frames) -> None:
    on_cpu = _filled(frames, on_device=False, augment=False)
    on_device = _filled(frames, on_device=True, augment=False)
    assert on_device.sources == on_cpu.sources
    for a, b in zip(on_device.geometry_tables(), on_cpu.geometry_tables()):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(on_device.pixels[:on_device.size], on_cpu.pixels[:on_cpu.size])
    # Same cells of the same images; features differ only by the resampling (bilinear on the
    # device, OpenCV's on the host) and the gray conversion's rounding.
    difference = (on_device.features[:on_device.size].float()
                  - on_cpu.features[:on_cpu.size].float()).abs()
    scale = on_cpu.features[:on_cpu.size].float().abs().mean()
    assert float(difference.mean()) < 0.1 * float(scale), (difference.mean(), scale)


def test_a_cuda_mapper_augments_on_the_device_and_a_cpu_one_does_not() -> None:
    assert not Mapper(mapping_config('tiny'), make_runtime('cpu')).augment_on_device
    if torch.cuda.is_available():
        assert Mapper(mapping_config('tiny'), make_runtime('cuda')).augment_on_device
