"""Encoder and head compiled with OpenVINO for CPU inference.

Why: on this project's reference CPU (2-core AVX-512 BF16) OpenVINO's bf16 kernels run the
480x640 encoder in ~130 ms and the 4800-cell head in ~49 ms, against ~154 ms and ~64 ms for
PyTorch's bf16 autocast (channels-last); the numbers are in benchmarks/RESULTS.md. The
modules are converted from the same PyTorch weights, so results match the torch path to
bf16 precision. Compiled models are cached per input shape (a camera's size is fixed).
"""

from __future__ import annotations

import logging
import time
from typing import Dict, Tuple

import numpy as np
import torch

from ace_ros.core import device as device_lib
from ace_ros.core.network import Encoder, Head, image_to_network_input

_logger = logging.getLogger(__name__)


def available() -> bool:
    """True when the openvino package imports."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


class OpenVinoNetwork:
    """`encode` (image -> features) and `predict` (features -> points) on the CPU."""

    def __init__(self, encoder: Encoder, head: Head, mixed_precision: bool = True) -> None:
        import openvino as ov
        self._ov = ov
        self._core = ov.Core()
        cpu_precision = device_lib.precision(torch.device('cpu'), mixed_precision)
        self._config = {
            'INFERENCE_PRECISION_HINT': 'bf16' if cpu_precision == 'bf16' else 'f32',
            'INFERENCE_NUM_THREADS': torch.get_num_threads(),
            'PERFORMANCE_HINT': 'LATENCY'}
        self._encoder = encoder.float().cpu().eval()
        self._head = head.float().cpu().eval()
        self._compiled: Dict[Tuple[str, tuple], object] = {}

    def _request(self, name: str, module: torch.nn.Module, example: torch.Tensor) -> object:
        key = (name, tuple(example.shape))
        if key not in self._compiled:
            start = time.perf_counter()
            with torch.no_grad():  # torch.export: TorchScript tracing is deprecated
                model = self._ov.convert_model(torch.export.export(module, (example,)))
            self._compiled[key] = self._core.compile_model(
                model, 'CPU', self._config).create_infer_request()
            # Once per input size: the first frame of a camera pays for it.
            _logger.info('compiled the %s with OpenVINO (%s) for input %s in %.1f s', name,
                         self._config['INFERENCE_PRECISION_HINT'], tuple(example.shape),
                         time.perf_counter() - start)
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
