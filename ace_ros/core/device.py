"""Device choice: the only place that decides between CPU and CUDA."""

from __future__ import annotations

import contextlib
import functools
import logging
import platform
from typing import ContextManager, Optional

import torch

_logger = logging.getLogger(__name__)


def resolve_device(spec: str = 'auto') -> torch.device:
    """'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N' -> torch.device.

    Raises:
        ValueError: for an unknown spec, or CUDA asked for where none is available.
    """
    spec = spec.strip().lower()
    if spec == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if spec == 'cpu':
        return torch.device('cpu')
    if spec == 'cuda' or spec.startswith('cuda:'):
        if not torch.cuda.is_available():
            raise ValueError(f"device '{spec}' was asked for but CUDA is not available "
                             "(use 'auto' or 'cpu')")
        device = torch.device(spec)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device '{spec}': only {torch.cuda.device_count()} CUDA "
                             'device(s) present')
        return device
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got '{spec}'")


@functools.lru_cache(maxsize=None)
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively: AVX-512 BF16 or AMX on x86, the BF16
    extension on Arm (as oneDNN reports it).

    Why it matters: without them bf16 is emulated. On a 2-core AVX2-only EPYC a (1024, 512) x
    (512, 512) product took 414 ms in bf16 against 5 ms in fp32, and a head training step
    under bf16 autocast was slower than in fp32; with AVX-512 BF16 bf16 is 2-3x faster.
    """
    if platform.machine().lower() in ('x86_64', 'amd64', 'i386', 'i686'):
        checks = ('_is_avx512_bf16_supported', '_is_amx_tile_supported')
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """The reduced precision for matrix work on `device`, or None for plain fp32: fp16 on CUDA
    (tensor cores), bf16 on a CPU that computes it natively, fp32 on other CPUs."""
    if device.type == 'cuda':
        return torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else None


def autocast(device: torch.device, enabled: bool = True) -> ContextManager:
    """Mixed-precision context for `device`; a no-op when disabled or where the hardware
    has no fast reduced precision (see `autocast_dtype`)."""
    dtype = autocast_dtype(device) if enabled else None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def precision(device: torch.device, mixed_precision: bool = True) -> str:
    """'fp16', 'bf16' or 'fp32': what `autocast(device, mixed_precision)` computes in."""
    dtype = autocast_dtype(device) if mixed_precision else None
    return {torch.float16: 'fp16', torch.bfloat16: 'bf16'}.get(dtype, 'fp32')


def describe(device: torch.device, encoder_precision: str = 'float') -> str:
    """Human-readable device name for logs and reports; `encoder_precision` as the mapping
    setting (resolved here when 'auto')."""
    if device.type == 'cuda':
        return f'{device} ({torch.cuda.get_device_name(device)})'
    computes = precision(device)
    encoder = ', int8 encoder' \
        if resolve_encoder_precision(encoder_precision, device) == 'int8' else ''
    return f'cpu ({torch.get_num_threads()} threads, ' \
        f"{computes}{'' if computes == 'bf16' else ', no native bf16'}{encoder})"


def resolve_encoder_precision(spec: str, device: torch.device) -> str:
    """The encoder features a map is built from: 'float' (fp32, or bf16/fp16 per
    `precision`) or 'int8' (OpenVINO, quantized; see `openvino_backend`).

    'auto' takes int8 on a CPU without native bf16 when OpenVINO and NNCF are installed: there
    it encodes ~2x faster, so a time budget holds ~2x more images, at the same accuracy (TUM
    split on 2 AVX2 cores: 84.3 % within 5cm/5deg either way, 9 vs 14 failures;
    benchmarks/RESULTS.md); float everywhere else, where int8 is not measured yet.

    Raises:
        ValueError: for an unknown spec, or 'int8' where it cannot run.
    """
    from ace_ros.core import openvino_backend
    from ace_ros.core.config import ENCODER_PRECISIONS
    spec = _checked_precision('encoder_precision', spec, ENCODER_PRECISIONS, device,
                              lambda: openvino_backend.available(int8=True),
                              'the openvino and nncf packages (setup.sh --extras int8)')
    if spec == 'auto':
        return 'int8' if device.type == 'cpu' and not cpu_has_fast_bf16() \
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
    from ace_ros.core import quantized_head
    from ace_ros.core.config import HEAD_PRECISIONS
    return _checked_precision('head_precision', spec, HEAD_PRECISIONS, device,
                              quantized_head.available, "PyTorch's dynamic quantization, which "
                              'this PyTorch build does not have (use float)')


def _checked_precision(setting: str, spec: str, choices: tuple, device: torch.device,
                       available, needs: str) -> str:
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


BACKENDS = ('auto', 'torch', 'openvino', 'openvino-int8')


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
    from ace_ros.core import openvino_backend
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
