"""Tests for ace_ros.core.weights: deterministic random encoder, safe loading, specs."""

from __future__ import annotations

import logging
import math
from pathlib import Path
import pickle

from ace_ros.core import weights
from ace_ros.core.mapfile import encoder_identity
from ace_ros.core.network import Encoder, ENCODER_SHAPES
from ace_ros.core.weights import load_encoder_state, random_encoder_state, \
    resolve_encoder_state
import pytest
import safetensors.torch
import torch

CPU = torch.device('cpu')


def _touch(path: str) -> None:
    """The side effect an attacker's pickle would run on load."""
    Path(path).write_text('pwned')


class _Payload:
    """Unpickling this calls _touch(marker): arbitrary code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (_touch, (self.marker,))


@pytest.fixture(scope='module')
def state() -> dict:
    return random_encoder_state(7)


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


def test_random_encoder_state_is_deterministic():
    a, b, c = random_encoder_state(3), random_encoder_state(3), random_encoder_state(4)
    _assert_same(a, b)
    assert encoder_identity(a) == encoder_identity(b)
    assert encoder_identity(a) != encoder_identity(c)
    assert not torch.equal(a['conv1.weight'], c['conv1.weight'])


def test_random_encoder_state_shapes_and_init(state):
    assert {k: tuple(v.shape) for k, v in state.items()} == ENCODER_SHAPES
    for name, tensor in state.items():
        assert tensor.dtype == torch.float32
        if name.endswith('.bias'):
            assert not tensor.any()
        else:
            bound = math.sqrt(6.0 / tensor[0].numel())
            assert tensor.abs().max() <= bound
            assert tensor.abs().max() > 0.9 * bound
    Encoder().load_state_dict(state)  # strict


def test_load_fp32_torch_file(tmp_path, state):
    path = tmp_path / 'encoder.pt'
    torch.save(state, path)
    _assert_same(load_encoder_state(path), state)
    _assert_same(load_encoder_state(str(path)), state)


def test_load_fp16_torch_file_gives_fp32_and_same_identity(tmp_path, state):
    path = tmp_path / 'encoder_fp16.pt'
    torch.save({k: v.half() for k, v in state.items()}, path)
    loaded = load_encoder_state(path)
    for name, tensor in loaded.items():
        assert tensor.dtype == torch.float32
        torch.testing.assert_close(tensor, state[name].half().float(), rtol=0, atol=0)
    assert encoder_identity(loaded) == encoder_identity(state)


def test_load_safetensors(tmp_path, state):
    path = tmp_path / 'encoder.safetensors'
    safetensors.torch.save_file(state, str(path))
    _assert_same(load_encoder_state(path), state)
    half = tmp_path / 'encoder_fp16.safetensors'
    safetensors.torch.save_file({k: v.half() for k, v in state.items()}, str(half))
    assert encoder_identity(load_encoder_state(half)) == encoder_identity(state)


def test_refuses_torch_file_with_arbitrary_object(tmp_path):
    marker = tmp_path / 'marker'
    path = tmp_path / 'evil.pt'
    torch.save({'conv1.weight': _Payload(marker)}, path)
    with pytest.raises(ValueError, match='could not be read as a state dict'):
        load_encoder_state(path)
    assert not marker.exists()
    # The payload is real: an unrestricted load runs it.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_refuses_plain_pickle_with_arbitrary_object(tmp_path):
    marker = tmp_path / 'marker'
    for name in ('evil.pkl', 'evil.pt', 'evil.safetensors'):
        path = tmp_path / name
        path.write_bytes(pickle.dumps(_Payload(marker), protocol=2))
        with pytest.raises(ValueError, match=rf'{name} could not be read as a state dict'):
            load_encoder_state(path)
        assert not marker.exists()
    with open(tmp_path / 'evil.pkl', 'rb') as file:
        pickle.load(file)
    assert marker.exists()


def test_refuses_non_dict(tmp_path, state):
    path = tmp_path / 'list.pt'
    torch.save(list(state.values()), path)
    with pytest.raises(ValueError, match='holds a list, expected a state dict'):
        load_encoder_state(path)


def test_refuses_dict_of_non_tensors(tmp_path):
    path = tmp_path / 'numbers.pt'
    torch.save({name: 1 for name in ENCODER_SHAPES}, path)
    with pytest.raises(ValueError, match=r'conv1\.weight is a int, expected a tensor'):
        load_encoder_state(path)


def test_refuses_wrong_keys(tmp_path, state):
    path = tmp_path / 'renamed.pt'
    torch.save({('encoder.' + k): v for k, v in state.items()}, path)
    with pytest.raises(ValueError, match='not an ACE encoder state dict: missing keys'):
        load_encoder_state(path)


def test_refuses_wrong_shapes(tmp_path, state):
    path = tmp_path / 'shape.pt'
    torch.save({**state, 'conv4.bias': torch.zeros(128)}, path)
    with pytest.raises(ValueError, match=r'conv4\.bias has shape \(128,\), expected \(256,\)'):
        load_encoder_state(path)


def test_refuses_oversize_file(tmp_path, state, monkeypatch):
    path = tmp_path / 'encoder.pt'
    torch.save(state, path)
    monkeypatch.setattr(weights, 'MAX_ENCODER_BYTES', 1000)
    with pytest.raises(ValueError, match='refusing files over 1000 bytes'):
        load_encoder_state(path)


def test_refuses_missing_file(tmp_path):
    with pytest.raises(ValueError, match='does not exist'):
        load_encoder_state(tmp_path / 'nope.pt')
    with pytest.raises(ValueError, match='does not exist'):
        load_encoder_state(tmp_path)  # a directory is not a file


def test_refuses_garbage(tmp_path):
    path = tmp_path / 'garbage.safetensors'
    path.write_bytes(b'\x00' * 64)
    with pytest.raises(ValueError, match='could not be read'):
        load_encoder_state(path)


def test_resolve_random_specs():
    state, label = resolve_encoder_state('random:3')
    _assert_same(state, random_encoder_state(3))
    assert '3' in label
    state, label = resolve_encoder_state('random')
    _assert_same(state, random_encoder_state(0))
    for bad in ('random:x', 'random:-1', 'random:1.5'):
        with pytest.raises(ValueError, match='random:SEED'):
            resolve_encoder_state(bad)


def test_resolve_path_spec(tmp_path, state):
    path = tmp_path / 'encoder.pt'
    torch.save(state, path)
    loaded, label = resolve_encoder_state(str(path))
    _assert_same(loaded, state)
    assert label == str(path)
    with pytest.raises(ValueError, match='does not exist'):
        resolve_encoder_state(str(tmp_path / 'randomly_named.pt'))


def test_resolve_empty_spec(tmp_path, state, monkeypatch, caplog):
    monkeypatch.setattr(weights, 'SHIPPED_ENCODER', tmp_path / 'absent.safetensors')
    with caplog.at_level(logging.WARNING, logger='ace_ros.core.weights'):
        loaded, label = resolve_encoder_state('')
    _assert_same(loaded, random_encoder_state(0))
    assert 'random' in label
    assert 'no shipped encoder' in caplog.text
    shipped = tmp_path / 'shipped.safetensors'
    safetensors.torch.save_file(state, str(shipped))
    monkeypatch.setattr(weights, 'SHIPPED_ENCODER', shipped)
    loaded, label = resolve_encoder_state('')
    _assert_same(loaded, state)
    assert 'shipped' in label


def test_build_encoder():
    encoder, identity, label = weights.build_encoder('random:2', CPU)
    assert identity == encoder_identity(random_encoder_state(2))
    assert not encoder.training
    assert not any(p.requires_grad for p in encoder.parameters())
    _assert_same({k: v for k, v in encoder.state_dict().items()}, random_encoder_state(2))


def test_the_shipped_encoder_is_the_default_and_matches_its_model_card():
    import hashlib
    from safetensors import safe_open
    assert weights.SHIPPED_ENCODER.is_file()
    state, label = weights.resolve_encoder_state('')
    assert label.startswith('shipped')
    assert {k: tuple(v.shape) for k, v in state.items()} == ENCODER_SHAPES
    with safe_open(str(weights.SHIPPED_ENCODER), 'pt') as file:
        assert all(file.get_tensor(k).dtype == torch.float16 for k in file.keys())
    digest = hashlib.sha256(weights.SHIPPED_ENCODER.read_bytes()).hexdigest()
    card = (weights.SHIPPED_ENCODER.parent / 'MODEL_CARD.md').read_text()
    assert digest in card, 'MODEL_CARD.md names another file: update it with the weights'
    assert weights.SHIPPED_ENCODER.stat().st_size < 12e6
