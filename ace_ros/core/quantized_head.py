"""The map's head with int8 matrix products, for localization on CPUs without native bf16.

Dynamic quantization: weights int8 per output channel, each layer's input quantized with the
range of the frame at hand. Static ranges calibrated beforehand (OpenVINO + NNCF) ran the head
faster (87 vs ~120 ms at 480x640 on 2 AVX2 cores; fp32: 171 ms) but cost 3-17 points within
5cm/5deg on the TUM split, whether calibrated on synthetic or on TUM frames; per-frame ranges
cost 0-2.3 points and ~1 mm (activations get 7 bits: fbgemm's range on AVX2; see
benchmarks/RESULTS.md, session 6), so the float head stays the default. PyTorch's fbgemm
kernels are the only fast CPU implementation of dynamic int8 we have; PyTorch deprecates that
API, so `available` turns False when it goes and asking for int8 becomes a clear error.

The last layer (512 -> 4, homogeneous coordinates) stays fp32: it is ~1 % of the work and
its output is the scene coordinate itself.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from ace_ros.core.network import Head


def _quantization():
    """torch.ao.quantization, imported without its deprecation warnings (see module doc)."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        import torch.ao.quantization as quantization
    return quantization


def available() -> bool:
    """Whether this PyTorch build runs dynamic int8 linear layers on this CPU."""
    try:
        quantization = _quantization()
    except ImportError:
        return False
    return hasattr(quantization, 'quantize_dynamic') \
        and torch.backends.quantized.engine not in ('none', '')


def int8_head(head: Head) -> Head:
    """A CPU copy of `head` whose 1x1 convolutions (all but the last) are int8 linear layers;
    it takes flat (N, 512) features only. `head` itself is left as it is."""
    quantization = _quantization()
    linear = copy.deepcopy(head).float().cpu().eval()
    for name, module in list(linear.named_modules()):
        # The context layer runs once per image (nothing to gain) and stays fp32 like `out`.
        if isinstance(module, nn.Conv2d) and name not in ('out', 'ctx'):
            layer = nn.Linear(module.in_channels, module.out_channels)
            layer.weight.data.copy_(module.weight.detach().flatten(1))
            layer.bias.data.copy_(module.bias.detach())
            parent, _, child = name.rpartition('.')
            setattr(linear.get_submodule(parent) if parent else linear, child, layer)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return quantization.quantize_dynamic(
            linear, {nn.Linear: quantization.per_channel_dynamic_qconfig}, dtype=torch.qint8)


class Int8HeadPredictor:
    """(512, H, W) features -> (H * W, 3) float32 scene coordinates, row-major cells: the
    `predict` of TorchNetwork / OpenVinoNetwork, with the int8 head."""

    def __init__(self, head: Head) -> None:
        self.head = int8_head(head)

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        c, h, w = features.shape
        flat = features.float().cpu().reshape(c, h * w).T.contiguous()
        with torch.inference_mode():
            return self.head(flat)
