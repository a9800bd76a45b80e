"""Device and precision choice (ace_ros/core/device.py)."""

from __future__ import annotations

import pytest
import torch

from ace_ros.core import device as device_lib
from ace_ros.core.network import Head, HeadConfig

CPU = torch.device('cpu')


@pytest.fixture(params=[True, False], ids=['native-bf16', 'no-bf16'])
def bf16_cpu(request, monkeypatch):
    """Pretend the CPU has (or lacks) native bf16, whatever this machine has."""
    monkeypatch.setattr(device_lib, 'cpu_has_fast_bf16', lambda: request.param)
    return request.param


def test_cpu_precision_follows_the_hardware(bf16_cpu):
    expected = torch.bfloat16 if bf16_cpu else None
    assert device_lib.autocast_dtype(CPU) == expected
    assert device_lib.precision(CPU) == ('bf16' if bf16_cpu else 'fp32')
    assert device_lib.precision(CPU, mixed_precision=False) == 'fp32'
    with device_lib.autocast(CPU):
        assert torch.is_autocast_enabled('cpu') == bf16_cpu
        product = torch.ones(4, 4) @ torch.ones(4, 4)
    assert product.dtype == (torch.bfloat16 if bf16_cpu else torch.float32)
    with device_lib.autocast(CPU, enabled=False):
        assert not torch.is_autocast_enabled('cpu')
    assert device_lib.describe(CPU).endswith('bf16)' if bf16_cpu else 'no native bf16)')


@pytest.mark.parametrize('has_bf16, expected', [(True, 'bf16'), (False, 'fp16')])
def test_cuda_takes_bf16_where_the_gpu_has_it(monkeypatch, has_bf16, expected):
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *args, **kwargs: has_bf16)
    cuda = torch.device('cuda')
    assert device_lib.precision(cuda) == expected
    assert device_lib.autocast_dtype(cuda) == {'bf16': torch.bfloat16,
                                               'fp16': torch.float16}[expected]


def test_fast_bf16_check_answers_a_bool():
    assert isinstance(device_lib.cpu_has_fast_bf16(), bool)


def test_head_takes_the_buffers_fp16_features_with_or_without_autocast(bf16_cpu):
    torch.manual_seed(0)
    head = Head(HeadConfig()).eval()
    features = torch.randn(64, 512)
    with torch.no_grad():
        exact = head(features)
        with device_lib.autocast(CPU):
            reduced = head(features.half())
    assert reduced.dtype == torch.float32 and reduced.shape == (64, 3)
    tolerance = 0.05 if bf16_cpu else 1e-2  # bf16 matmuls, or fp16 input rounding only
    assert torch.allclose(reduced, exact, atol=tolerance * exact.abs().max().item())


def test_resolve_device():
    assert device_lib.resolve_device('auto').type in ('cpu', 'cuda')
    assert device_lib.resolve_device(' CPU ') == CPU
    with pytest.raises(ValueError, match="'auto', 'cpu', 'cuda' or 'cuda:N'"):
        device_lib.resolve_device('tpu')
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='CUDA is not available'):
            device_lib.resolve_device('cuda')
