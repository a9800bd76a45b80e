"""Inference backends: OpenVINO and PyTorch give the same scene coordinates and poses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ace_ros.core import device as device_lib
from ace_ros.core.buffer import prepare_image
from ace_ros.core.config import LocalizationConfig, mapping_config
from ace_ros.core.localizer import Localizer
from ace_ros.core import runtime as runtime_lib
from ace_ros.core.mapper import Mapper, map_frames
from ace_ros.data.calibration import calibration_inputs
from ace_ros.data.synthetic import SyntheticSceneConfig, generate_frames

HEIGHT, WIDTH = 96, 128


SCENE = SyntheticSceneConfig(seed=2, width=WIDTH, height=HEIGHT, focal=525 * HEIGHT / 480,
                             n_train=6, n_test=2, texel_size=0.01)


@pytest.fixture(scope='module')
def small_map():
    scene = SCENE
    frames = list(generate_frames(scene, 'train'))
    cfg = mapping_config('tiny', image_height=HEIGHT, max_iterations=30, device='cpu',
                         encoder='random:0')
    scene_map = map_frames(frames, cfg).scene_map
    return scene_map, list(generate_frames(scene, 'test'))


def _runtime():
    return runtime_lib.make_runtime('cpu', 'random:0', calibration_inputs)


def _localizer(scene_map, backend, mixed_precision=True, head_precision='float'):
    return Localizer(scene_map, LocalizationConfig(
        device='cpu', image_height=HEIGHT, encoder='random:0', backend=backend,
        min_inliers=4, mixed_precision=mixed_precision, head_precision=head_precision),
        _runtime())


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


def test_localizer_encodes_at_the_maps_height_unless_told(small_map):
    scene_map, frames = small_map
    assert scene_map.mapping_config['image_height'] == HEIGHT
    follows = Localizer(scene_map, LocalizationConfig(device='cpu', encoder='random:0'))
    told = Localizer(scene_map, LocalizationConfig(device='cpu', encoder='random:0',
                                                   image_height=2 * HEIGHT))
    assert (follows.image_height, told.image_height) == (HEIGHT, 2 * HEIGHT)
    # The cell grid shows the height the image was encoded at: 1/8 of it.
    assert follows.predict_scene_coordinates(frames[0])[1].shape[0] == HEIGHT // 8
    assert told.predict_scene_coordinates(frames[0])[1].shape[0] == 2 * HEIGHT // 8


def test_backend_choice():
    cpu = torch.device('cpu')
    assert runtime_lib.resolve_backend('auto', cpu) == 'openvino'  # installed by setup
    assert runtime_lib.resolve_backend('Torch', cpu) == 'torch'
    assert runtime_lib.resolve_backend('auto', torch.device('cuda')) == 'torch'
    with pytest.raises(ValueError, match='CPU only'):
        runtime_lib.resolve_backend('openvino', torch.device('cuda'))
    with pytest.raises(ValueError, match="auto, torch, openvino, openvino-int8; got 'onnx'"):
        runtime_lib.resolve_backend('onnx', cpu)
    assert runtime_lib.resolve_backend('OpenVINO-int8', cpu) == 'openvino-int8'
    with pytest.raises(ValueError, match="'openvino-int8' runs on the CPU only"):
        runtime_lib.resolve_backend('openvino-int8', torch.device('cuda'))


def _median_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.reshape(512, -1).double(), b.reshape(512, -1).double()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0).median())


@pytest.fixture
def int8_cache(tmp_path, monkeypatch):
    """A private cache, and calibration at this file's image size (fast)."""
    from ace_ros.core import openvino_backend
    monkeypatch.setenv('ACE_ROS_CACHE_DIR', str(tmp_path))
    monkeypatch.setattr(openvino_backend, 'CALIBRATION_SIZE', (HEIGHT, WIDTH))
    return tmp_path


def test_int8_encoder_is_close_to_fp32_and_cached_on_disk(small_map, int8_cache, monkeypatch,
                                                          caplog):
    from ace_ros.core import openvino_backend
    quantize = openvino_backend.quantize_encoder
    scene_map, frames = small_map
    gray = prepare_image(frames[0], HEIGHT).gray
    exact = _localizer(scene_map, 'openvino', mixed_precision=False)._network.encode(gray)
    int8 = _localizer(scene_map, 'openvino-int8')
    assert int8.backend == 'openvino-int8'
    features = int8._network.encode(gray)
    assert features.shape == exact.shape
    assert 0.95 < _median_cosine(features, exact) < 0.99999  # quantized, and close
    cached = list((int8_cache / 'openvino').glob('encoder-*-int8-*/encoder.xml'))
    assert len(cached) == 1 and scene_map.encoder_sha256[:16] in str(cached[0])
    # Any image size from the one cached model; a second localizer reads the cache.
    assert int8._network.encode(np.zeros((HEIGHT // 2, WIDTH), np.float32)).shape == (
        512, HEIGHT // 16, WIDTH // 8)
    monkeypatch.setattr(openvino_backend, 'quantize_encoder', _fail)
    again = _localizer(scene_map, 'openvino-int8')._network.encode(gray)
    torch.testing.assert_close(again, features)
    # A damaged cache entry is rebuilt with a warning, not fatal.
    cached[0].write_text('<net broken')
    monkeypatch.setattr(openvino_backend, 'quantize_encoder', quantize)
    rebuilt = _localizer(scene_map, 'openvino-int8')
    assert rebuilt.localize(frames[1]).timings_ms['encoder'] > 0
    assert 'ignoring the unreadable cached encoder' in caplog.text
    monkeypatch.setattr(openvino_backend, 'quantize_encoder', _fail)  # replaced in the cache
    torch.testing.assert_close(_localizer(scene_map, 'openvino-int8')._network.encode(gray),
                               rebuilt._network.encode(gray))


def test_int8_maps_localize_with_the_int8_encoder(small_map, int8_cache, caplog):
    """Mapping records its encoder's precision; localization follows it, and warns when told
    to use the other kind of features."""
    scene_map, frames = small_map
    train = list(generate_frames(SCENE, 'train'))
    cfg = mapping_config('tiny', image_height=HEIGHT, max_iterations=30, device='cpu',
                         encoder='random:0', encoder_precision='int8')
    mapper = Mapper(cfg, _runtime())
    assert mapper.cfg.encoder_precision == 'int8'
    mapped = map_frames(train, cfg, runtime=_runtime())
    int8_map, device = mapped.scene_map, mapped.device
    assert int8_map.mapping_config['encoder_precision'] == 'int8' and 'int8 encoder' in device
    assert scene_map.mapping_config['encoder_precision'] == 'float'  # the tiny preset's
    # Mapping and localization see the same features: the same cached int8 model.
    localizer = _localizer(int8_map, 'auto')
    assert localizer.backend == 'openvino-int8' and 'expect lower accuracy' not in caplog.text
    prepared = prepare_image(train[0], HEIGHT)
    torch.testing.assert_close(mapper._encoder_features(prepared.gray),
                               localizer._network.encode(prepared.gray))
    assert _localizer(int8_map, 'openvino').backend == 'openvino'
    assert 'built from int8 encoder features' in caplog.text
    with pytest.raises(ValueError, match="encoder_precision must be 'auto', 'float' or 'int8'"):
        mapping_config('cpu', encoder_precision='fp8')
    with pytest.raises(ValueError, match="'int8' runs on the CPU only"):
        runtime_lib.resolve_encoder_precision('int8', torch.device('cuda'))


def test_int8_head_predicts_close_to_the_float_head(small_map):
    from ace_ros.core.quantized_head import int8_head
    scene_map, frames = small_map
    exact = _localizer(scene_map, 'torch', mixed_precision=False)
    int8 = _localizer(scene_map, 'torch', mixed_precision=False, head_precision='int8')
    assert (exact.head_precision, int8.head_precision) == ('float', 'int8')
    for frame in frames:
        points = exact.predict_scene_coordinates(frame)[1]
        points_int8, timings = int8.predict_scene_coordinates(frame)[1::2]
        # Quantized, and close: a few mm in a room-sized scene (the 5 cm accuracy class).
        error = np.median(np.linalg.norm(points_int8 - points, axis=-1))
        assert 0 < error < 0.01, error
        assert timings['head'] > 0
    # Only the head's copy is quantized: the map's head still predicts in float.
    head = exact.head
    quantized = int8_head(head)
    assert type(quantized.fc1).__name__ == 'Linear' and quantized.fc1 is not head.fc1
    assert 'quantized' in type(quantized.fc1).__module__
    assert isinstance(quantized.out, torch.nn.Conv2d) and head.fc1.weight.dtype == torch.float32
    features = torch.randn(7, 512)
    torch.testing.assert_close(head(features), quantized(features), atol=0.05, rtol=0.05)


def test_head_precision_choice(monkeypatch):
    from ace_ros.core import quantized_head
    cpu, resolve = torch.device('cpu'), runtime_lib.resolve_head_precision
    assert LocalizationConfig().head_precision == 'float'  # int8 costs accuracy: opt in
    assert resolve(' Float', cpu) == 'float' and resolve('INT8', cpu) == 'int8'
    assert resolve('float', torch.device('cuda')) == 'float'
    with pytest.raises(ValueError, match="'int8' runs on the CPU only"):
        resolve('int8', torch.device('cuda'))
    with pytest.raises(ValueError, match="head_precision must be one of float, int8"):
        resolve('int4', cpu)
    with pytest.raises(ValueError, match="head_precision must be one of"):
        LocalizationConfig(head_precision='int4')
    # When PyTorch drops dynamic quantization, asking for int8 is a clear error.
    monkeypatch.setattr(quantized_head, 'available', lambda: False)
    with pytest.raises(ValueError, match='dynamic quantization'):
        resolve('int8', cpu)


def _fail(*args, **kwargs):
    raise AssertionError('quantized again instead of reading the cache')


def test_encoder_precision_choice(monkeypatch):
    import importlib.util
    cpu, resolve = torch.device('cpu'), runtime_lib.resolve_encoder_precision
    monkeypatch.setattr(device_lib, 'cpu_has_fast_bf16', lambda: False)
    assert resolve('auto', cpu) == 'int8' and resolve('auto', torch.device('cuda')) == 'float'
    assert resolve(' Float', cpu) == 'float' and resolve('int8', cpu) == 'int8'
    monkeypatch.setattr(device_lib, 'cpu_has_fast_bf16', lambda: True)
    assert resolve('auto', cpu) == 'float'  # int8 is not measured against native bf16
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec',
                        lambda name, *args: None if name == 'nncf' else find_spec(name, *args))
    monkeypatch.setattr(device_lib, 'cpu_has_fast_bf16', lambda: False)
    assert resolve('auto', cpu) == 'float'  # without nncf
    with pytest.raises(ValueError, match=r'needs the openvino and nncf packages \(setup.sh '
                                         r'--extras int8\)'):
        resolve('int8', cpu)
    with pytest.raises(ValueError, match=r"openvino and nncf packages are not installed \(bash "
                                         r"scripts/setup.sh --extras int8;"):
        runtime_lib.resolve_backend('openvino-int8', cpu)
    assert runtime_lib.resolve_backend('auto', cpu, map_encoder='int8') == 'openvino'


@pytest.mark.parametrize('global_context', [False, True])
def test_a_narrow_head_maps_saves_and_runs_on_every_backend(tmp_path, global_context):
    """head_channels 256, with and without each image's context: the map records it, the
    file round-trips, and PyTorch, OpenVINO and the int8 head predict the same scene
    coordinates from it (the context, a mean over the image, computed in each backend)."""
    from ace_ros.core.mapfile import load_map, save_map
    frames = list(generate_frames(SCENE, 'train'))
    cfg = mapping_config('tiny', image_height=HEIGHT, max_iterations=10, device='cpu',
                         encoder='random:0', head_channels=256, global_context=global_context)
    scene_map = map_frames(frames, cfg).scene_map
    assert scene_map.head_config['channels'] == 256
    assert tuple(scene_map.head_state['inp.weight'].shape) == (256, 512, 1, 1)
    assert scene_map.head_config['context_channels'] == (512 if global_context else 0)
    assert ('ctx.weight' in scene_map.head_state) == global_context
    path = tmp_path / 'narrow.ace'
    save_map(str(path), scene_map)
    loaded = load_map(str(path))
    query = list(generate_frames(SCENE, 'test'))[0]
    exact = _localizer(loaded, 'torch', mixed_precision=False)
    reference = exact.predict_scene_coordinates(query)[1]
    assert np.isfinite(reference).all()
    for other in (_localizer(loaded, 'openvino', mixed_precision=False),
                  _localizer(loaded, 'torch', mixed_precision=False, head_precision='int8')):
        points = other.predict_scene_coordinates(query)[1]
        assert np.median(np.linalg.norm(points - reference, axis=-1)) < 0.01
