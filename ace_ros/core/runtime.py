"""The runtime: the one place that turns settings into where and how the networks run.

`make_runtime` makes the job's one choice of device (`device.py`) and loads its encoder
(`weights.py`). The `Runtime` then builds what each job runs: the features a map is trained
from (`mapping_encoder`: float, or the int8 encoder through OpenVINO) and the networks a
localizer runs (`localization_network`: PyTorch, OpenVINO or OpenVINO with the int8 encoder;
the head in float or int8). After that one choice the device follows the tensors.

An int8 encoder is quantized on calibration images, and core does not make images: the caller
passes a `CalibrationSource` in (the tools and nodes pass `ace_ros.data.calibration`'s, a
synthetic room), so that core imports nothing from the layers above it. A quantized encoder
is cached on disk, so the images are asked for once per encoder and machine.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Callable, List, Optional

import numpy as np
import torch

from ace_ros.core import device as device_lib
from ace_ros.core import openvino_backend, quantized_head
from ace_ros.core.buffer import encode
from ace_ros.core.config import ENCODER_PRECISIONS, HEAD_PRECISIONS
from ace_ros.core.network import Encoder, Head
from ace_ros.core.weights import build_encoder

_logger = logging.getLogger(__name__)

#: (height, width) -> encoder inputs (1, 1, height, width) to quantize an encoder on.
CalibrationSource = Callable[[int, int], List[np.ndarray]]
#: (H, W) float32 gray in [0, 1] -> (512, H/8, W/8) features.
FeatureFunction = Callable[[np.ndarray], torch.Tensor]

BACKENDS = ('auto', 'torch', 'openvino', 'openvino-int8')


@dataclass(frozen=True)
class Runtime:
    """Where the networks run, and the encoder they start from."""
    device: torch.device
    #: None where nothing is encoded (training on a given buffer)
    encoder: Optional[Encoder] = None
    #: the encoder's identity: maps record it, and it keys the int8 encoder's cache
    encoder_sha256: str = ''
    encoder_label: str = ''
    calibration: Optional[CalibrationSource] = None

    def encoder_precision(self, spec: str) -> str:
        """A mapping's `encoder_precision` setting, resolved on this device."""
        return resolve_encoder_precision(spec, self.device)

    def describe(self, encoder_precision: str = 'float') -> str:
        """Human-readable device name for logs and reports, e.g. 'cpu (2 threads, fp32, no
        native bf16, int8 encoder)'; `encoder_precision` as the mapping setting."""
        int8 = self.encoder_precision(encoder_precision) == 'int8'
        return device_lib.describe(self.device, int8_encoder=int8)

    def mapping_encoder(self, encoder_precision: str, mixed_precision: bool) -> FeatureFunction:
        """The features a map is trained from; `encoder_precision` resolved ('float' or
        'int8'). The int8 encoder is read from the disk cache or quantized now (~25 s on 2
        cores, once per encoder)."""
        if encoder_precision == 'int8':
            return openvino_backend.Int8Encoder(self.encoder, self.encoder_sha256,
                                                self.calibration)
        return functools.partial(encode, self.encoder, device=self.device,
                                 mixed_precision=mixed_precision)

    def localization_network(self, head: Head, backend: str, head_precision: str,
                             map_encoder: str, mixed_precision: bool) -> 'LocalizationNetwork':
        """The encoder and `head` as a localizer runs them: `backend` and `head_precision`
        as the settings say ('auto' resolved here), for a map built from `map_encoder`
        ('float' or 'int8') features."""
        backend = resolve_backend(backend, self.device, map_encoder)
        if backend.startswith('openvino'):
            network = openvino_backend.OpenVinoNetwork(
                self.encoder, head, mixed_precision, int8_encoder=backend == 'openvino-int8',
                encoder_id=self.encoder_sha256, calibration=self.calibration)
        else:
            network = TorchNetwork(self.encoder, head, self.device, mixed_precision)
        head_precision = resolve_head_precision(head_precision, self.device)
        predict = quantized_head.Int8HeadPredictor(head) if head_precision == 'int8' \
            else network.predict
        return LocalizationNetwork(backend, head_precision, network, predict)


@dataclass(frozen=True)
class LocalizationNetwork:
    """What `Runtime.localization_network` chose and built."""
    backend: str
    head_precision: str
    #: `encode` (gray image -> features) and `predict` (features -> points) of the backend
    network: object
    #: features -> (H * W, 3) scene coordinates: the backend's, or the int8 head's
    predict: Callable[[torch.Tensor], torch.Tensor]


def make_runtime(device: str = 'auto', encoder: Optional[str] = None,
                 calibration: Optional[CalibrationSource] = None) -> Runtime:
    """The runtime for a `device` spec ('auto', 'cpu', 'cuda', 'cuda:N') and an `encoder` spec
    (a weights file, 'shipped', 'random[:SEED]'; None: no encoder).

    Raises:
        ValueError: for a device that is not there, or an encoder that cannot be read.
    """
    resolved = device_lib.resolve_device(device)
    if encoder is None:
        return Runtime(resolved, calibration=calibration)
    network, sha256, label = build_encoder(encoder, resolved)
    return Runtime(resolved, network, sha256, label, calibration)


class TorchNetwork:
    """Encoder and head run by PyTorch (any device); OpenVinoNetwork has the same interface."""

    def __init__(self, encoder: Encoder, head: Head, device: torch.device,
                 mixed_precision: bool = True) -> None:
        self.encoder, self.head = encoder, head
        self.device, self.mixed_precision = device, mixed_precision

    def encode(self, gray: np.ndarray) -> torch.Tensor:
        """(H, W) float32 gray in [0, 1] -> (512, H/8, W/8) features."""
        return encode(self.encoder, gray, self.device, self.mixed_precision)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """(512, H, W) features -> (H * W, 3) scene coordinates, cells in row-major order."""
        c, h, w = features.shape
        with torch.inference_mode(), device_lib.autocast(self.device, self.mixed_precision):
            return self.head(features.reshape(c, h * w).T)


def resolve_encoder_precision(spec: str, device: torch.device) -> str:
    """The encoder features a map is built from: 'float' (fp32, or bf16/fp16 per
    `device.precision`) or 'int8' (OpenVINO, quantized; see `openvino_backend`).

    'auto' takes int8 on a CPU without native bf16 when OpenVINO and NNCF are installed: there
    it encodes ~2x faster, so a time budget holds ~2x more images, at the same accuracy (TUM
    split on 2 AVX2 cores: 84.3 % within 5cm/5deg either way, 9 vs 14 failures;
    benchmarks/RESULTS.md); float everywhere else, where int8 is not measured yet.

    Raises:
        ValueError: for an unknown spec, or 'int8' where it cannot run.
    """
    spec = _checked_precision('encoder_precision', spec, ENCODER_PRECISIONS, device,
                              lambda: openvino_backend.available(int8=True),
                              'the openvino and nncf packages (setup.sh --extras int8)')
    if spec == 'auto':
        return 'int8' if device.type == 'cpu' and not device_lib.cpu_has_fast_bf16() \
            and openvino_backend.available(int8=True) else 'float'
    return spec


def resolve_head_precision(spec: str, device: torch.device) -> str:
    """The head's arithmetic at localization: 'float' (fp32, or bf16/fp16 per `precision`)
    or 'int8' (dynamic quantization; see `quantized_head`).

    float is the default: int8 runs the head ~1.2x faster on a CPU without native bf16 (155
    vs 190 ms at 480x640 on 2 AVX2 cores) but costs 0-2.3 points within 5cm/5deg and ~1 mm
    (benchmarks/RESULTS.md, session 6): a choice for who needs the 35 ms more than those.

    Raises:
        ValueError: for an unknown spec, or 'int8' where it cannot run.
    """
    return _checked_precision('head_precision', spec, HEAD_PRECISIONS, device,
                              quantized_head.available, "PyTorch's dynamic quantization, which "
                              'this PyTorch build does not have (use float)')


def _checked_precision(setting: str, spec: str, choices: tuple, device: torch.device,
                       available: Callable[[], bool], needs: str) -> str:
    """`spec` normalised; ValueError when it is not one of `choices`, or is 'int8' off the
    CPU or where `available()` says it cannot run (the error says it `needs`)."""
    spec = spec.strip().lower()
    if spec not in choices:
        raise ValueError(f"{setting} must be one of {', '.join(choices)}; got '{spec}'")
    if spec == 'int8':
        if device.type != 'cpu':
            raise ValueError(f"{setting} 'int8' runs on the CPU only, but device is {device}")
        if not available():
            raise ValueError(f"{setting} 'int8' needs {needs}")
    return spec


def resolve_backend(spec: str, device: torch.device, map_encoder: str = 'float') -> str:
    """Inference backend for localization: 'auto', 'torch', 'openvino' or 'openvino-int8'
    (the encoder quantized to int8) -> the one that runs.

    'auto' follows the map: a map built from int8 features (`map_encoder`) localizes with the
    int8 encoder; otherwise OpenVINO on the CPU when it is installed (faster than PyTorch
    there, in bf16 and in fp32) and PyTorch elsewhere. OpenVINO is CPU-only here. A choice
    that gives other features than the map was built from works, at a loss of accuracy: it
    is logged as a warning.

    Raises:
        ValueError: for an unknown spec, or an OpenVINO backend where it cannot run.
    """
    spec = spec.strip().lower()
    if spec not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got '{spec}'")
    cpu = device.type == 'cpu'
    if spec == 'auto':
        if map_encoder == 'int8' and cpu and openvino_backend.available(int8=True):
            spec = 'openvino-int8'
        else:
            spec = 'openvino' if cpu and openvino_backend.available() else 'torch'
    elif spec.startswith('openvino'):
        if not cpu:
            raise ValueError(f"backend '{spec}' runs on the CPU only, but device is {device}")
        int8 = spec == 'openvino-int8'
        if not openvino_backend.available(int8):
            extras = 'int8' if int8 else 'openvino'
            raise ValueError(f"backend '{spec}' asked for but the openvino "
                             f"{'and nncf packages are' if int8 else 'package is'} not "
                             f'installed (bash scripts/setup.sh --extras {extras}; or use '
                             'backend torch)')
    if (spec == 'openvino-int8') != (map_encoder == 'int8'):
        _logger.warning("the map was built from %s encoder features but backend '%s' gives "
                        '%s ones: expect lower accuracy (map again, or use backend auto)',
                        map_encoder, spec, 'int8' if spec == 'openvino-int8' else 'float')
    return spec
