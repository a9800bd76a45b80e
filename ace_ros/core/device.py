"""Device choice: the only place that decides between CPU and CUDA, and what precision the
hardware computes natively. Which networks run there is `runtime.py`'s."""

from __future__ import annotations

import contextlib
import functools
import gc
import platform
from typing import ContextManager, Optional

import torch


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
    """The reduced precision for matrix work on `device`, or None for plain fp32: on CUDA bf16
    where the GPU has it (Ampere and later: tensor cores, and fp32's range, so training needs
    no loss scaling, whose overflow check makes the host wait at every step), else fp16; bf16
    on a CPU that computes it natively, fp32 on other CPUs."""
    if device.type == 'cuda':
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
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


def describe(device: torch.device, int8_encoder: bool = False) -> str:
    """Human-readable device name for logs and reports; `int8_encoder` when the encoder runs
    in int8 (see `runtime.Runtime.describe`)."""
    if device.type == 'cuda':
        return f'{device} ({torch.cuda.get_device_name(device)})'
    computes = precision(device)
    return f'cpu ({torch.get_num_threads()} threads, ' \
        f"{computes}{'' if computes == 'bf16' else ', no native bf16'}" \
        f"{', int8 encoder' if int8_encoder else ''})"


def free_device_memory() -> None:
    """Give the memory of dropped models back: Python's garbage, and torch's CUDA cache
    (a ROS node's cleanup, after it dropped its model)."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
