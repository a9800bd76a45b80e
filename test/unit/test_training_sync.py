"""A training step queues its work on the device without waiting for it (issue 14: on a GPU a
wait at every step stalls the queue); the statistics are read only when asked for."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ace_ros.core.buffer import prepare_image, TrainingBuffer
from ace_ros.core.config import mapping_config
from ace_ros.core.training import HeadTrainer
from ace_ros.core.types import Frame

#: What makes the host wait for a tensor's value (on CUDA: a synchronisation).
SYNCS = ('item', 'tolist', 'cpu', 'numpy', 'nonzero', '__bool__', '__int__', '__float__',
         '__index__')
K = np.array([[100.0, 0, 80], [0, 100.0, 60], [0, 0, 1]])


def _buffer(device: torch.device, images: int = 4, cells: int = 300) -> TrainingBuffer:
    buffer = TrainingBuffer(images * cells, device)
    generator = torch.Generator().manual_seed(0)
    for i in range(images):
        pose = np.eye(4)
        pose[0, 3] = 0.1 * i
        frame = Frame(f'f{i}', np.full((120, 160, 3), 100, np.uint8), K, pose)
        features = torch.randn(512, 15, 20, generator=generator)
        buffer.add_image(prepare_image(frame, 120), features.to(device), cells, generator,
                         source=frame.name)
    buffer.targets[:buffer.size:3] = torch.randn(len(range(0, buffer.size, 3)), 3).to(device)
    return buffer


DEVICES = ['cpu', pytest.param('cuda', marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason='needs CUDA'))]


@pytest.mark.parametrize('device', DEVICES)
def test_a_training_step_never_waits_for_the_device(device: str, monkeypatch) -> None:
    device = torch.device(device)
    cfg = mapping_config('tiny', global_context=True, batch_size=256)
    buffer = _buffer(device)
    trainer = HeadTrainer(cfg, device, 512, np.zeros(3), torch.Generator().manual_seed(0))
    first = trainer.step(buffer, tau=50.0, weight=1.0)  # builds the buffer's tables
    before = [p.detach().clone() for p in trainer.head.parameters()]

    def sync(*args, **kwargs):
        raise AssertionError('a training step made the host wait for the device')
    with monkeypatch.context() as patch:
        if device.type == 'cuda':
            torch.cuda.set_sync_debug_mode('error')
        else:
            for name in SYNCS:
                patch.setattr(torch.Tensor, name, sync)
        try:
            outs = [trainer.step(buffer, tau=50.0, weight=1.0) for _ in range(3)]
        finally:
            if device.type == 'cuda':
                torch.cuda.set_sync_debug_mode('default')
    # The steps did train, and their statistics can be read afterwards.
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.head.parameters()))
    assert 0.0 <= outs[-1].valid_fraction <= 1.0 and np.isfinite(float(outs[-1].loss.detach()))
    assert np.isfinite(float(first.loss.detach()))
