"""Tests for ace_ros.core.mapfile: round trip, encoder identity, refusals, atomic save."""

from __future__ import annotations

import errno
import json
import os
import pathlib
from typing import Callable, Dict, Optional

from ace_ros import __version__
from ace_ros.core import mapfile
from ace_ros.core.mapfile import (EncoderMismatchError, encoder_identity, load_map, map_info,
                                  MapCloud, MapFileError, save_map, SceneMap)
from ace_ros.core.network import Head, HeadConfig
import numpy as np
import pytest
from safetensors import safe_open
import safetensors.torch
import torch

ENCODER_SHA = 'ab' * 32
OTHER_SHA = 'cd' * 32


def _scene_map(**overrides) -> SceneMap:
    gen = torch.Generator().manual_seed(0)
    fields = dict(
        head_state={'fc.weight': torch.randn(4, 3, 1, 1, generator=gen),
                    'fc.bias': torch.randn(4, generator=gen, dtype=torch.float64),
                    'steps': torch.tensor([7], dtype=torch.int64)},
        scene_mean=torch.tensor([1.0, -2.0, 0.5]),
        encoder_sha256=ENCODER_SHA,
        head_config={'num_blocks': 1, 'channels': 8, 'max_inv_scale': 4.0},
        world_frame_id='map',
        mapping_config={'iterations': 100, 'lr': [5e-4, 5e-3], 'device': 'cpu'},
        intrinsics=[np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])],
        frame_names=['frame-000000', 'frame-000001'],
        extras={'final_loss': 0.25})
    fields.update(overrides)
    return SceneMap(**fields)


@pytest.fixture
def map_path(tmp_path) -> str:
    path = str(tmp_path / 'room.ace')
    save_map(path, _scene_map())
    return path


def _rewrite(src: str, dst: str,
             edit_tensors: Optional[Callable[[Dict[str, torch.Tensor]], None]] = None,
             edit_metadata: Optional[Callable[[Dict[str, str]], None]] = None,
             rehash: bool = True) -> None:
    """Low-level writer: copy a map with edited tensors/metadata, bypassing SceneMap checks."""
    tensors = safetensors.torch.load_file(src)
    with safe_open(src, framework='pt') as fh:
        metadata = dict(fh.metadata())
    if edit_tensors:
        edit_tensors(tensors)
    if edit_metadata:
        edit_metadata(metadata)
    if rehash:
        metadata['payload_sha256'] = mapfile._payload_sha256(tensors)
    safetensors.torch.save_file(tensors, dst, metadata=metadata)


def _refused(path: str, *fragments: str, **kwargs) -> str:
    with pytest.raises(MapFileError) as info:
        load_map(path, **kwargs)
    message = str(info.value)
    assert path in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_round_trip(map_path):
    original = _scene_map()
    loaded = load_map(map_path, expected_encoder_sha256=ENCODER_SHA)
    assert set(loaded.head_state) == {'fc.weight', 'fc.bias', 'steps'}
    assert loaded.head_state['fc.weight'].dtype == torch.float16
    assert loaded.head_state['fc.bias'].dtype == torch.float16
    assert loaded.head_state['steps'].dtype == torch.int64
    for name, tensor in original.head_state.items():
        assert torch.equal(loaded.head_state[name], tensor)
    raw = torch.Generator().manual_seed(0)
    assert torch.equal(loaded.head_state['fc.weight'],
                       torch.randn(4, 3, 1, 1, generator=raw).half())
    assert loaded.scene_mean.dtype == torch.float32
    assert torch.equal(loaded.scene_mean, torch.tensor([1.0, -2.0, 0.5]))
    for name in ('encoder_sha256', 'head_config', 'world_frame_id', 'mapping_config',
                 'intrinsics', 'frame_names', 'extras'):
        assert getattr(loaded, name) == getattr(original, name), name
    assert loaded.intrinsics[0][0] == [500.0, 0.0, 320.0]
    assert loaded.ace_ros_version == __version__
    assert loaded.created_utc.endswith('Z')
    # Re-saving keeps the creation time.
    save_map(map_path, loaded)
    assert load_map(map_path).created_utc == loaded.created_utc


def test_round_trip_real_head(tmp_path):
    head = Head(HeadConfig(num_blocks=1, channels=8))
    path = str(tmp_path / 'head.ace')
    save_map(path, _scene_map(head_state=head.weights(), head_config=head.config.to_dict()))
    loaded = load_map(path)
    restored = Head(HeadConfig(**loaded.head_config))
    restored.load_state_dict({**loaded.head_state, 'scene_mean': loaded.scene_mean})
    for name, tensor in head.weights().items():
        assert torch.equal(restored.state_dict()[name], tensor.half().float())


def test_map_info_reads_header_only(map_path):
    with open(map_path, 'r+b') as fh:  # corrupt the tensor data: info must not notice
        fh.seek(-1, os.SEEK_END)
        fh.write(b'\xff')
    info = map_info(map_path)
    assert info['format'] == 'ace_ros.map'
    assert info['format_version'] == 1
    assert info['encoder_sha256'] == ENCODER_SHA
    assert info['frame_names'] == ['frame-000000', 'frame-000001']
    assert info['head_config']['channels'] == 8
    assert info['num_parameters'] == 4 * 3 + 4 + 1
    assert info['file_bytes'] == os.path.getsize(map_path)


def test_encoder_identity_ignores_storage_precision():
    gen = torch.Generator().manual_seed(1)
    state = {'conv1.weight': torch.randn(8, 1, 3, 3, generator=gen),
             'conv1.bias': torch.randn(8, generator=gen)}
    identity = encoder_identity(state)
    assert len(identity) == 64
    assert encoder_identity({k: v.half() for k, v in state.items()}) == identity
    assert encoder_identity({k: v.double() for k, v in state.items()}) == identity
    assert encoder_identity(dict(reversed(list(state.items())))) == identity
    changed = {k: v.clone() for k, v in state.items()}
    changed['conv1.weight'][0, 0, 0, 0] += 0.5
    assert encoder_identity(changed) != identity
    renamed = {'conv0.weight' if k == 'conv1.weight' else k: v for k, v in state.items()}
    assert encoder_identity(renamed) != identity
    reshaped = {k: v.reshape(-1) for k, v in state.items()}
    assert encoder_identity(reshaped) != identity
    with pytest.raises(ValueError, match='empty'):
        encoder_identity({})


@pytest.mark.parametrize('overrides, match', [
    ({'scene_mean': torch.tensor([0.0, float('nan'), 1.0])}, 'scene_mean'),
    ({'scene_mean': torch.zeros(4)}, r'\(4,\)'),
    ({'head_state': {}}, 'non-empty'),
    ({'head_state': {'scene_mean': torch.zeros(3)}}, 'scene_mean'),
    ({'head_state': {'w': torch.full((2,), 1e6)}}, 'fp16 range'),
    ({'encoder_sha256': 'abc'}, 'encoder_sha256'),
    ({'frame_names': 'frame-0'}, 'frame_names'),
    ({'world_frame_id': ''}, 'world_frame_id'),
    ({'intrinsics': [np.eye(4)]}, r'intrinsics\[0\]'),
    ({'mapping_config': {'lr': float('inf')}}, 'mapping_config'),
    ({'extras': {'obj': object()}}, 'extras'),
])
def test_scene_map_validation(overrides, match):
    with pytest.raises(ValueError, match=match):
        _scene_map(**overrides)


def test_refuses_missing_and_non_file(tmp_path):
    _refused(str(tmp_path / 'nope.ace'), 'does not exist')
    _refused(str(tmp_path), 'not a regular file')


def test_refuses_oversized_before_reading(tmp_path, map_path, monkeypatch):
    _refused(map_path, 'bytes, more than the 100', max_bytes=100)
    big = str(tmp_path / 'big.ace')
    with open(big, 'wb') as fh:  # sparse: no disk space used
        fh.truncate(mapfile.MAX_MAP_BYTES + 1)

    def no_open(*args, **kwargs):
        raise AssertionError('file was opened before the size check')
    monkeypatch.setattr('builtins.open', no_open)
    _refused(big, f'more than the {mapfile.MAX_MAP_BYTES} bytes')


@pytest.mark.parametrize('keep', [0, 5, 8, 40, -1])
def test_refuses_truncated(map_path, keep):
    with open(map_path, 'rb') as fh:
        data = fh.read()
    with open(map_path, 'wb') as fh:
        fh.write(data[:keep] if keep >= 0 else data[:-1])
    _refused(map_path, 'too short' if 0 <= keep < 8 else 'truncated')


def test_refuses_trailing_bytes(map_path):
    with open(map_path, 'ab') as fh:
        fh.write(b'\0' * 16)
    _refused(map_path, 'too long')


@pytest.mark.parametrize('content', [
    bytes(range(256)) * 4,
    b'\x10\x00\x00\x00\x00\x00\x00\x00not json at all!',
    b'\x02\x00\x00\x00\x00\x00\x00\x00[]',
])
def test_refuses_garbage(tmp_path, content):
    path = str(tmp_path / 'garbage.ace')
    with open(path, 'wb') as fh:
        fh.write(content)
    _refused(path, 'not a safetensors map file')


def test_refuses_foreign_safetensors(tmp_path):
    path = str(tmp_path / 'model.safetensors')
    safetensors.torch.save_file({'w': torch.zeros(2)}, path)
    _refused(path, "format is None, expected 'ace_ros.map'")
    safetensors.torch.save_file({'w': torch.zeros(2)}, path, metadata={'format': 'pt'})
    _refused(path, "format is 'pt'")


@pytest.mark.parametrize('version, words', [
    ('4', ('version 4 is newer than version 3', 'newest', 'upgrade')),
    ('0', ('version 0 is older than version 1', 'oldest', 're-map'))])
def test_refuses_other_format_versions(map_path, version, words):
    _rewrite(map_path, map_path, edit_metadata=lambda m: m.update(format_version=version))
    message = _refused(map_path, *words)
    with pytest.raises(MapFileError, match=f'version {version}'):
        map_info(map_path)
    assert __version__ in message


def test_refuses_corrupt_payload(map_path):
    with open(map_path, 'r+b') as fh:
        fh.seek(-3, os.SEEK_END)
        byte = fh.read(1)
        fh.seek(-3, os.SEEK_END)
        fh.write(bytes([byte[0] ^ 0x01]))
    _refused(map_path, 'corrupt', 'SHA-256')


def test_refuses_corrupt_header_json(map_path):
    with open(map_path, 'rb') as fh:
        data = bytearray(fh.read())
    data[data.index(b'"format"') + len(b'"format"')] = ord(';')  # was ':'
    with open(map_path, 'wb') as fh:
        fh.write(bytes(data))
    _refused(map_path, 'bad header')


@pytest.mark.parametrize('key', ['world_frame_id', 'encoder_sha256', 'payload_sha256'])
def test_refuses_missing_metadata(map_path, key):
    _rewrite(map_path, map_path, edit_metadata=lambda m: m.pop(key), rehash=False)
    _refused(map_path, 'lacks metadata keys', key)


def test_refuses_bad_metadata_values(map_path):
    _rewrite(map_path, map_path, edit_metadata=lambda m: m.update(frame_names='[1, 2'))
    _refused(map_path, 'not valid JSON')
    save_map(map_path, _scene_map())
    _rewrite(map_path, map_path, edit_metadata=lambda m: m.update(head_config='[1, 2]'))
    _refused(map_path, 'invalid map contents', 'head_config must be a dict')


def test_refuses_missing_or_unexpected_tensors(map_path):
    _rewrite(map_path, map_path, edit_tensors=lambda t: t.pop('scene_mean'))
    _refused(map_path, 'scene_mean missing')
    save_map(map_path, _scene_map())
    _rewrite(map_path, map_path, edit_tensors=lambda t: t.update(stray=torch.zeros(1)))
    _refused(map_path, "unexpected ['stray']")


@pytest.mark.parametrize('mean, words', [
    (torch.tensor([0.0, float('inf'), 1.0]), ('finite', 'inf')),
    (torch.zeros(3, dtype=torch.float16), ('float32', 'torch.float16')),
])
def test_refuses_bad_scene_mean(map_path, mean, words):
    _rewrite(map_path, map_path, edit_tensors=lambda t: t.update(scene_mean=mean))
    _refused(map_path, 'scene_mean', *words)


def test_refuses_other_encoder(map_path):
    with pytest.raises(EncoderMismatchError) as info:
        load_map(map_path, expected_encoder_sha256=OTHER_SHA)
    message = str(info.value)
    assert f'built with encoder {ENCODER_SHA[:12]}' in message
    assert f'loaded encoder is {OTHER_SHA[:12]}' in message
    assert '--encoder' in message and map_path in message
    assert isinstance(info.value, ValueError)
    load_map(map_path, expected_encoder_sha256=ENCODER_SHA.upper())


class _DiskFull:
    """A file object that writes half of what it is given, then fails like a full disk."""

    def __init__(self, fh):
        self._fh = fh

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()

    def write(self, data):
        self._fh.write(data[:len(data) // 2])
        raise OSError(errno.ENOSPC, 'No space left on device')


@pytest.mark.parametrize('failure', ['write', 'fsync', 'replace', 'interrupt'])
def test_failed_save_keeps_previous_file(tmp_path, map_path, monkeypatch, failure):
    with open(map_path, 'rb') as fh:
        before = fh.read()
    real_fdopen = os.fdopen

    def boom(*args, **kwargs):
        raise OSError(errno.EIO, 'simulated failure')

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt
    if failure == 'write':  # the map's bytes go out through Path.write_bytes (atomic_file)
        monkeypatch.setattr(pathlib.Path, 'write_bytes',
                            lambda path, data: _DiskFull(real_fdopen(
                                os.open(path, os.O_WRONLY), 'wb')).write(data))
    else:
        monkeypatch.setattr(mapfile.os, 'fsync' if failure != 'replace' else 'replace',
                            interrupt if failure == 'interrupt' else boom)
    new_map = _scene_map(world_frame_id='other')
    with pytest.raises((OSError, KeyboardInterrupt)):
        save_map(map_path, new_map)
    with pytest.raises((OSError, KeyboardInterrupt)):
        save_map(str(tmp_path / 'fresh.ace'), new_map)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ['room.ace']
    with open(map_path, 'rb') as fh:
        assert fh.read() == before
    assert load_map(map_path).world_frame_id == 'map'


def test_save_replaces_and_keeps_mode(map_path):
    os.chmod(map_path, 0o600)
    save_map(map_path, _scene_map(world_frame_id='other'))
    assert load_map(map_path).world_frame_id == 'other'
    assert os.stat(map_path).st_mode & 0o777 == 0o600
    assert os.listdir(os.path.dirname(map_path)) == ['room.ace']


def test_save_into_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        save_map(str(tmp_path / 'no' / 'room.ace'), _scene_map())


def test_metadata_is_plain_json_in_safetensors_header(map_path):
    with safe_open(map_path, framework='pt') as fh:
        metadata = fh.metadata()
        keys = set(fh.keys())
    assert keys == {'head.fc.weight', 'head.fc.bias', 'head.steps', 'scene_mean'}
    assert metadata['format'] == 'ace_ros.map'
    assert json.loads(metadata['format_version']) == 1
    assert json.loads(metadata['frame_names']) == ['frame-000000', 'frame-000001']


def _cloud(n: int = 5) -> MapCloud:
    rng = np.random.default_rng(0)
    return MapCloud(rng.normal(size=(n, 3)) * 100.0,
                    rng.integers(0, 256, size=(n, 3), dtype=np.uint8))


def test_cloud_round_trip_is_version_2(tmp_path):
    path = str(tmp_path / 'cloud.ace')
    cloud = _cloud()
    save_map(path, _scene_map(cloud=cloud))
    loaded = load_map(path)
    assert loaded.cloud.points.dtype == np.float32 and loaded.cloud.colors.dtype == np.uint8
    np.testing.assert_array_equal(loaded.cloud.points, cloud.points)
    np.testing.assert_array_equal(loaded.cloud.colors, cloud.colors)
    info = map_info(path)
    assert info['format_version'] == 2 and info['cloud_points'] == 5


def test_map_without_cloud_stays_version_1(map_path):
    """Older ace_ros read only version 1: a map with nothing new must stay readable there."""
    assert load_map(map_path).cloud is None
    info = map_info(map_path)
    assert info['format_version'] == 1 and info['cloud_points'] == 0


def test_cloud_tensors_checked(tmp_path, map_path):
    cloud_path = str(tmp_path / 'cloud.ace')
    save_map(cloud_path, _scene_map(cloud=_cloud()))
    # Cloud tensors in a file that says version 1 are not what version 1 allows.
    _rewrite(cloud_path, map_path, edit_metadata=lambda m: m.update(format_version='1'))
    _refused(map_path, "unexpected ['cloud.colors', 'cloud.points']")
    _rewrite(cloud_path, map_path, edit_tensors=lambda t: t.pop('cloud.colors'))
    _refused(map_path, 'invalid map contents', 'cloud.points but not cloud.colors')
    _rewrite(cloud_path, map_path,
             edit_tensors=lambda t: t.update({'cloud.colors': t['cloud.colors'][:2]}))
    _refused(map_path, 'cloud colors must be (N, 3) like the points')


@pytest.mark.parametrize('points, colors, match', [
    (np.zeros((0, 3)), np.zeros((0, 3), np.uint8), 'N >= 1'),
    (np.zeros((2, 2)), np.zeros((2, 3), np.uint8), r'\(N, 3\)'),
    (np.array([[0.0, np.nan, 0.0]]), np.zeros((1, 3), np.uint8), 'finite'),
    (np.zeros((1, 3)), np.zeros((1, 3)), 'uint8'),
])
def test_map_cloud_validation(points, colors, match):
    with pytest.raises(ValueError, match=match):
        MapCloud(points, colors)
    with pytest.raises(ValueError, match='MapCloud or None'):
        _scene_map(cloud=np.zeros((1, 3)))
