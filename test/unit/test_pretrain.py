"""Encoder pretraining: exact correspondences, the loss, a tiny resumable run, its output."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from safetensors import safe_open

from ace_ros import pretrain as pretrain_module
from ace_ros.core.network import ENCODER_SHAPES, cell_centers
from ace_ros.core.weights import load_encoder_state
from ace_ros.pretrain import (
    VALIDATION_SEED, Pretrainer, PretrainConfig, correspondence_loss, load_photographs,
    photo_pair, pretrain, render_room, room_pair)

SMALL = dict(width=160, height=120, rooms=1, frames_per_room=8, pairs_per_step=1,
             cells_per_pair=64, device='cpu')


@pytest.fixture(scope='module')
def room():
    return render_room(1000, PretrainConfig(**SMALL))


def _patch_error(pair, cfg, shuffle_rng=None):
    """Median absolute difference of 5x5 patches at corresponding points (8-bit levels)."""
    xy_a = cell_centers(cfg.height, cfg.width).reshape(2, -1).T.numpy()[pair.cells_a]
    xy_b = pair.xy_b if shuffle_rng is None else pair.xy_b[shuffle_rng.permutation(len(
        pair.xy_b))]
    a, b = pair.gray_a.astype(np.float32), pair.gray_b.astype(np.float32)
    return np.median([np.abs(cv2.getRectSubPix(a, (5, 5), (float(p[0]), float(p[1]))) -
                             cv2.getRectSubPix(b, (5, 5), (float(q[0]), float(q[1])))).mean()
                      for p, q in zip(xy_a, xy_b)])


def test_room_pairs_correspond_exactly(room):
    cfg = PretrainConfig(**SMALL)
    rng = np.random.default_rng(0)
    pair = room_pair(room, rng, cfg, min_cells=16)
    assert pair is not None and len(pair.cells_a) >= 16
    # Corresponding points look alike; the same points shuffled do not.
    assert _patch_error(pair, cfg) < 0.3 * _patch_error(pair, cfg, rng)


def test_photo_pairs_correspond_exactly(room, tmp_path):
    cfg = PretrainConfig(**SMALL)
    rgb = np.repeat(room.gray[0][..., None], 3, axis=2)
    cv2.imwrite(str(tmp_path / 'photo.png'), cv2.resize(rgb, (320, 240)))
    photos = load_photographs([tmp_path], cfg.height)
    assert len(photos) == 1 and photos[0].shape[0] == int(1.5 * cfg.height)
    rng = np.random.default_rng(1)
    pair = photo_pair(photos[0], rng, cfg, min_cells=16)
    assert pair is not None
    assert _patch_error(pair, cfg) < 0.3 * _patch_error(pair, cfg, rng)


def test_load_photographs_refuses_missing_or_empty(tmp_path):
    with pytest.raises(ValueError, match='does not exist'):
        load_photographs([tmp_path / 'nope'], 120)
    with pytest.raises(ValueError, match='no images'):
        load_photographs([tmp_path], 120)


def test_correspondence_loss_rewards_matching_features():
    cfg = PretrainConfig(**SMALL)
    rows, cols = cfg.height // 8, cfg.width // 8
    features = torch.randn(512, rows, cols)
    cells = torch.arange(0, rows * cols, 3)
    xy = cell_centers(cfg.height, cfg.width).reshape(2, -1).T[cells]
    same_loss, same_acc = correspondence_loss(features, features, cells, xy, cfg)
    other_loss, other_acc = correspondence_loss(features, torch.randn(512, rows, cols), cells,
                                                xy, cfg)
    assert same_acc == 1.0 and other_acc < 0.2
    assert same_loss < 0.1 < other_loss


def test_a_few_steps_on_one_pair_reduce_the_loss(room):
    cfg = PretrainConfig(**SMALL, learning_rate=3e-4, warmup=1, steps=40)
    trainer = Pretrainer(cfg)
    trainer.rooms = {1000: room}
    trainer._refresh_rooms = lambda: None  # keep the one pre-rendered room
    pair = room_pair(room, np.random.default_rng(2), cfg, min_cells=16)
    trainer._pairs = lambda: [pair]
    losses = [trainer.train_step()['loss'] for _ in range(24)]
    # Photometric augmentation makes single steps noisy: compare the ends' means.
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 1.0


def test_tiny_run_writes_a_compatible_encoder_and_resumes(tmp_path, monkeypatch):
    real_validation_pairs = pretrain_module.validation_pairs
    monkeypatch.setattr(pretrain_module, 'validation_pairs',
                        lambda c: real_validation_pairs(c, n_rooms=1, per_room=2))
    # With the per-room head loss on, so the heads' state goes through the checkpoint too.
    cfg = PretrainConfig(**SMALL, steps=4, checkpoint_every=2, validate_every=2, warmup=1,
                         head_weight=0.5, head_steps=1)
    seen = []
    pretrain(cfg, tmp_path / 'run', lambda r, t: seen.append(r['step']), stop_at=2)
    assert (tmp_path / 'run' / 'checkpoint.pt').is_file()
    out = pretrain(cfg, tmp_path / 'run', lambda r, t: seen.append(r['step']))
    assert seen == [1, 2, 3, 4]  # resumed after step 2, not from the start
    assert {k: tuple(v.shape) for k, v in load_encoder_state(out).items()} == ENCODER_SHAPES
    with safe_open(str(out), 'pt') as file:  # shipped as fp16
        assert all(file.get_tensor(k).dtype == torch.float16 for k in file.keys())
    checkpoint = torch.load(tmp_path / 'run' / 'checkpoint.pt', weights_only=True)
    assert checkpoint['step'] == 4
    assert any('val_accuracy' in r for r in checkpoint['history'])
    assert all('head_loss' in r for r in checkpoint['history'] if 'loss' in r)
    assert list(checkpoint['heads']) == ['1000']
    # A checkpoint only resumes with the settings that wrote it.
    with pytest.raises(ValueError, match='other settings'):
        pretrain(PretrainConfig(**SMALL, steps=5), tmp_path / 'run')


def test_head_loss_trains_the_room_head(room):
    cfg = PretrainConfig(**SMALL, head_weight=1.0, head_lr=3e-3, head_steps=3, warmup=1,
                         real_fraction=0.0)
    trainer = Pretrainer(cfg)
    trainer.rooms = {1000: room}
    trainer.heads = {1000: trainer._new_head(1000, room)}
    trainer._refresh_rooms = lambda: None
    pair = room_pair(room, np.random.default_rng(3), cfg, min_cells=16)
    trainer._pairs = lambda: [pair]
    losses = [trainer.train_step()['head_loss'] for _ in range(12)]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3


def test_config_refuses_bad_settings():
    with pytest.raises(ValueError, match='multiples of 8'):
        PretrainConfig(width=100)
    with pytest.raises(ValueError, match='real_fraction'):
        PretrainConfig(real_fraction=1.5)
    with pytest.raises(ValueError, match='validation seeds'):
        PretrainConfig(first_seed=VALIDATION_SEED - 5)
    assert PretrainConfig(real_scenes='a, b,').real_folders() == [Path('a'), Path('b')]


def test_resumed_run_reproduces_an_uninterrupted_one(tmp_path, monkeypatch):
    # The shipped weights came from a run resumed across sessions: resuming must not change
    # the result, so `pretrain-encoder ... --stop-at N` reproduces its tensors bit for bit.
    # (Not the file's bytes: safetensors writes its metadata keys in no fixed order.)
    real_validation_pairs = pretrain_module.validation_pairs
    monkeypatch.setattr(pretrain_module, 'validation_pairs',
                        lambda c: real_validation_pairs(c, n_rooms=1, per_room=2))
    cfg = PretrainConfig(**SMALL, steps=4, checkpoint_every=1, validate_every=2, warmup=1,
                         head_weight=0.5, head_steps=1)

    def tensors(path):
        return load_encoder_state(path)

    whole = tensors(pretrain(cfg, tmp_path / 'whole'))
    pretrain(cfg, tmp_path / 'resumed', stop_at=1)
    pretrain(cfg, tmp_path / 'resumed', stop_at=3)
    resumed = tensors(pretrain(cfg, tmp_path / 'resumed'))
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)
    stopped = tensors(pretrain(cfg, tmp_path / 'stopped', stop_at=3))
    assert not all(torch.equal(stopped[k], whole[k]) for k in whole)  # step 3 != step 4
