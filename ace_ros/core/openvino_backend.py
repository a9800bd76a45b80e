"""Encoder and head compiled with OpenVINO for CPU inference.

Why: on this project's reference CPU (2-core AVX-512 BF16) OpenVINO's bf16 kernels run the
480x640 encoder in ~130 ms and the 4800-cell head in ~49 ms, against ~154 ms and ~64 ms for
PyTorch's bf16 autocast (channels-last); the numbers are in benchmarks/RESULTS.md. The
modules are converted from the same PyTorch weights, so results match the torch path to
bf16 precision. Compiled models are cached per input shape (a camera's size is fixed).

The int8 encoder (`int8_encoder_model`): the encoder post-training-quantized by NNCF,
calibrated on images the caller gives (`ace_ros.data.calibration`: procedural synthetic
frames, no scene data needed). On a 2-core AVX2 CPU without
native bf16 it encodes a 480x640 image in ~240 ms against ~490 ms in fp32. Its features differ
from the float encoder's (median cosine ~0.99), and a head trained on one kind loses accuracy
on the other (TUM split: 84 % -> 68 % within 5cm/5deg), so a map is built and localized with
the same kind: mapping records it (`encoder_precision`) and localization follows the map.
Quantizing takes ~20 s once per encoder; the result is cached on disk as OpenVINO IR (XML +
weights, no pickles) with a dynamic input size, so mapping and localization share it.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from ace_ros.core import device as device_lib
from ace_ros.core.network import Encoder, Head, image_to_network_input

_logger = logging.getLogger(__name__)


#: Bump when the calibration data or quantization settings change: it keys the disk cache.
INT8_RECIPE = 'synthetic-v1'
CALIBRATION_SIZE = (480, 640)  # (height, width): the paper's input size


def available(int8: bool = False) -> bool:
    """True when the openvino package (and for `int8` also nncf) is installed; looked up,
    not imported (importing nncf takes seconds)."""
    return all(importlib.util.find_spec(name) is not None
               for name in (('openvino', 'nncf') if int8 else ('openvino',)))


def cache_dir() -> Path:
    """Where quantized encoders are kept: $ACE_ROS_CACHE_DIR, else ~/.cache/ace_ros."""
    if os.environ.get('ACE_ROS_CACHE_DIR'):
        return Path(os.environ['ACE_ROS_CACHE_DIR'])
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return Path(base) / 'ace_ros'


def quantize_encoder(model: object, inputs: List[np.ndarray]) -> object:
    """The OpenVINO encoder `model`, post-training quantized to int8 by NNCF on `inputs`."""
    import nncf
    return nncf.quantize(model, nncf.Dataset(inputs), subset_size=len(inputs),
                         preset=nncf.QuantizationPreset.PERFORMANCE)


def _convert(module: torch.nn.Module, example: torch.Tensor) -> object:
    import openvino as ov
    with torch.no_grad(), warnings.catch_warnings():  # torch.export: tracing is deprecated
        # PyTorch's own pytree code trips its own LeafSpec deprecation while exporting.
        warnings.filterwarnings('ignore', message='.*LeafSpec', category=FutureWarning)
        return ov.convert_model(torch.export.export(module, (example,)))


def int8_encoder_model(encoder: Encoder, encoder_id: str,
                       calibration: Optional[Callable[[int, int], List[np.ndarray]]]) -> object:
    """The int8 encoder as an OpenVINO model of any input size: from the disk cache when
    `encoder_id` (the encoder's sha256) is given and it is there, else quantized now on the
    inputs `calibration(height, width)` gives (see `runtime.CalibrationSource`).

    Raises:
        ValueError: if it must be quantized and there is no `calibration`.
    """
    import nncf
    import openvino as ov
    height, width = CALIBRATION_SIZE
    folder = cache_dir() / 'openvino' / (
        f'encoder-{encoder_id[:16]}-int8-{INT8_RECIPE}-{height}x{width}-'
        f'ov{ov.__version__.split("-")[0]}-nncf{nncf.__version__}')
    xml = folder / 'encoder.xml'
    if encoder_id and xml.is_file():
        try:
            return ov.Core().read_model(str(xml))
        except RuntimeError as error:  # a damaged cache entry is rebuilt, not fatal
            _logger.warning('ignoring the unreadable cached encoder %s: %s', folder, error)
            shutil.rmtree(folder, ignore_errors=True)
    if calibration is None:
        raise ValueError('the int8 encoder is not cached for this encoder and no calibration '
                         'images were given to quantize it (make the runtime with '
                         'calibration=ace_ros.data.calibration.calibration_inputs)')
    _logger.info('quantizing the encoder to int8 (once per encoder; ~20 s on 2 CPU cores)')
    start = time.perf_counter()
    module = copy.deepcopy(encoder).float().cpu().eval()  # the caller's stays as it is
    model = _convert(module, torch.zeros(1, 1, height, width))
    model.reshape([1, 1, -1, -1])  # any image size; ranges are per channel, not per pixel
    model = quantize_encoder(model, calibration(height, width))
    _logger.info('quantized the encoder in %.1f s', time.perf_counter() - start)
    if encoder_id:
        _save_atomically(ov, model, folder)
    return model


def _cpu_config(mixed_precision: bool) -> dict:
    precision = device_lib.precision(torch.device('cpu'), mixed_precision)
    return {'INFERENCE_PRECISION_HINT': 'bf16' if precision == 'bf16' else 'f32',
            'INFERENCE_NUM_THREADS': torch.get_num_threads(), 'PERFORMANCE_HINT': 'LATENCY'}


class Int8Encoder:
    """The int8 encoder for mapping: one compiled model for every augmented image size."""

    def __init__(self, encoder: Encoder, encoder_id: str,
                 calibration: Optional[Callable[[int, int], List[np.ndarray]]] = None) -> None:
        import openvino as ov
        model = int8_encoder_model(encoder, encoder_id, calibration)
        self._request = ov.Core().compile_model(
            model, 'CPU', _cpu_config(False)).create_infer_request()

    def __call__(self, gray: np.ndarray) -> torch.Tensor:
        """(H, W) float32 gray in [0, 1] -> (512, ceil(H/8), ceil(W/8)) float32 features."""
        image = image_to_network_input(torch.from_numpy(gray)[None, None]).float()
        return torch.from_numpy(np.asarray(self._request.infer([image.numpy()])[0])[0].copy())


class OpenVinoNetwork:
    """`encode` (image -> features) and `predict` (features -> points) on the CPU."""

    def __init__(self, encoder: Encoder, head: Head, mixed_precision: bool = True,
                 int8_encoder: bool = False, encoder_id: str = '',
                 calibration: Optional[Callable[[int, int], List[np.ndarray]]] = None) -> None:
        """`encoder_id` (the encoder's sha256) keys the disk cache of int8 encoders; without
        it nothing is cached. `calibration` gives the images to quantize it on."""
        import openvino as ov
        self._ov = ov
        self._core = ov.Core()
        self._config = _cpu_config(mixed_precision)
        self._encoder = encoder.float().cpu().eval()
        self._head = head.float().cpu().eval()
        self._compiled: Dict[Tuple[str, tuple], object] = {}
        self.int8_encoder, self._encoder_id = int8_encoder, encoder_id
        self._calibration = calibration
        self._int8_model = None  # read or quantized once, reshaped per image size

    def _request(self, name: str, module: torch.nn.Module, example: torch.Tensor) -> object:
        key = (name, tuple(example.shape))
        if key not in self._compiled:
            start = time.perf_counter()
            int8 = name == 'encoder' and self.int8_encoder
            if int8:
                if self._int8_model is None:
                    self._int8_model = int8_encoder_model(self._encoder, self._encoder_id,
                                                          self._calibration)
                model = self._int8_model
                model.reshape(list(example.shape))  # a fixed size runs ~9 % faster
            else:
                model = _convert(module, example)
            # The int8 encoder runs as mapping ran it (fp32 hint), so a map's features are
            # reproduced exactly even where bf16 is native.
            config = _cpu_config(False) if int8 else self._config
            self._compiled[key] = self._core.compile_model(
                model, 'CPU', config).create_infer_request()
            # Once per input size: the first frame of a camera pays for it.
            _logger.info('compiled the %s with OpenVINO (%s) for input %s in %.1f s', name,
                         'int8' if int8 else config['INFERENCE_PRECISION_HINT'],
                         tuple(example.shape), time.perf_counter() - start)
        return self._compiled[key]

    def encode(self, gray: np.ndarray) -> torch.Tensor:
        """(H, W) float32 gray in [0, 1] -> (512, H/8, W/8) float32 features."""
        image = image_to_network_input(torch.from_numpy(gray)[None, None]).float().contiguous()
        request = self._request('encoder', self._encoder, image)
        return torch.from_numpy(np.asarray(request.infer([image.numpy()])[0])[0])

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """(512, H, W) features -> (H * W, 3) float32 scene coordinates, row-major cells.

        The head runs on the feature map as 1x1 convolutions: flattening it to (H * W, 512)
        first would cost a ~9 ms transpose copy per 480x640 frame.
        """
        feature_map = features.float().contiguous()[None]
        request = self._request('head', self._head, feature_map)
        points = np.asarray(request.infer([feature_map.numpy()])[0])[0]  # (3, H, W)
        return torch.from_numpy(points.reshape(3, -1).T.copy())


def _save_atomically(ov: object, model: object, folder: Path) -> None:
    """Write `model` as IR into `folder` via a temporary sibling and a rename, so another
    process never reads half a model; a cache that cannot be written only costs time."""
    tmp = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix='.tmp-', dir=folder.parent))
        ov.save_model(model, str(tmp / 'encoder.xml'), compress_to_fp16=False)
        os.rename(tmp, folder)  # fails when another process cached it first: fine
        tmp = None
    except (OSError, RuntimeError) as error:
        if not folder.is_dir():
            _logger.warning('could not cache the int8 encoder in %s: %s', folder, error)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
