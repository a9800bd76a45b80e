"""Atomic writes (map files, reports, pretraining checkpoints and exported encoders): an
interruption leaves the old file whole and no temporary file behind."""

from __future__ import annotations

import os

import pytest
import torch

from ace_ros.core.atomic_file import write_atomically
from ace_ros.pretrain import export_encoder, save_checkpoint
from ace_ros.core.network import Encoder


def _interrupted(tmp):
    tmp.write_bytes(b'half')
    raise KeyboardInterrupt  # Ctrl-C in the middle of writing


def test_an_interrupted_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / 'report.json'
    target.write_text('old')
    os.chmod(target, 0o600)
    with pytest.raises(KeyboardInterrupt):
        write_atomically(target, _interrupted)
    assert target.read_text() == 'old' and os.listdir(tmp_path) == ['report.json']
    write_atomically(target, lambda tmp: tmp.write_text('new'))
    assert target.read_text() == 'new' and os.listdir(tmp_path) == ['report.json']
    assert os.stat(target).st_mode & 0o777 == 0o600  # an existing file keeps its mode
    with pytest.raises(FileNotFoundError, match='does not exist'):
        write_atomically(tmp_path / 'missing' / 'x.json', lambda tmp: tmp.write_text('x'))


def test_pretraining_checkpoints_and_encoders_are_written_atomically(tmp_path, monkeypatch):
    checkpoint = tmp_path / 'checkpoint.pt'
    save_checkpoint(checkpoint, {'step': 1, 'weights': torch.ones(2)})
    monkeypatch.setattr(torch, 'save', lambda state, tmp: _interrupted(tmp))
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(checkpoint, {'step': 2, 'weights': torch.zeros(2)})
    monkeypatch.undo()
    assert torch.load(checkpoint, weights_only=True)['step'] == 1
    encoder_path = tmp_path / 'encoder.safetensors'
    export_encoder(Encoder(), encoder_path, {'step': '1'})
    assert sorted(os.listdir(tmp_path)) == ['checkpoint.pt', 'encoder.safetensors']
