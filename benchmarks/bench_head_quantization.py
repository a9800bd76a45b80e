"""How the map's head may be quantized: static OpenVINO int8 ranges against PyTorch's dynamic
(per-frame) ones, scored by `ace-ros evaluate` on the same map and queries.

Usage: .venv/bin/python benchmarks/bench_head_quantization.py VARIANT MAP SOURCE OUT.json
       [any `ace-ros evaluate` flag, e.g. --block-split 25:1]
VARIANT:
  static-synthetic         NNCF post-training quantization of the whole head, calibrated on
                           the encoder features of the 16 synthetic calibration frames
  static-synthetic-fp32out the same, the last layer (512 -> 4) left in fp32
  static-synthetic-minmax  the same, min-max activation ranges
  static-source            calibrated on 16 of SOURCE's own frames (every 12th of those left
                           by --block-split 25:0: the TUM split's mapping frames)
  dynamic                  what `--head-precision int8` runs (ace_ros.core.quantized_head)
The static variants replace OpenVinoNetwork.predict; the encoder is whatever the map uses.
"""

from __future__ import annotations

import logging
import sys

import numpy as np
import torch

from ace_ros import cli
from ace_ros.core import openvino_backend
from ace_ros.core.buffer import to_gray
from ace_ros.core.network import image_to_network_input
from ace_ros.data.base import block_split
from ace_ros.data.sources import open_source

VARIANTS = ('static-synthetic', 'static-synthetic-fp32out', 'static-synthetic-minmax',
            'static-source', 'dynamic')


def _calibration_images(variant: str, source: str) -> list:
    if variant != 'static-source':
        return openvino_backend.calibration_inputs(*openvino_backend.CALIBRATION_SIZE)
    frames = open_source(source)
    chosen = block_split(len(frames), 25, 0)[::12][:16]
    return [image_to_network_input(torch.from_numpy(to_gray(frames[i].image))[None, None])
            .float().numpy() for i in chosen]


def _static_predict(variant: str, source: str):
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet
    nncf.set_log_level(logging.ERROR)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        feature_map = features.float().contiguous()[None]
        if not hasattr(self, '_static_head'):
            calibration = []
            for image in _calibration_images(variant, source):
                request = self._request('encoder', self._encoder, torch.from_numpy(image))
                calibration.append(np.asarray(request.infer([image])[0]).copy())
            model = ov.convert_model(self._head, example_input=feature_map)
            options = {}
            if variant.endswith('fp32out'):
                convolutions = [op.get_friendly_name() for op in model.get_ordered_ops()
                                if op.get_type_name() == 'Convolution']
                options['ignored_scope'] = nncf.IgnoredScope(names=[convolutions[-1]])
            if variant.endswith('minmax'):
                options['advanced_parameters'] = AdvancedQuantizationParameters(
                    activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)
            quantized = nncf.quantize(model, nncf.Dataset(calibration),
                                      subset_size=len(calibration), **options)
            self._static_head = self._core.compile_model(
                quantized, 'CPU', self._config).create_infer_request()
        points = np.asarray(self._static_head.infer([feature_map.numpy()])[0])[0]
        return torch.from_numpy(points.reshape(3, -1).T.copy())
    return predict


def main() -> int:
    if len(sys.argv) < 5 or sys.argv[1] not in VARIANTS:
        print(__doc__)
        return 2
    variant, map_path, source, out = sys.argv[1:5]
    flags = ['--json', out, *sys.argv[5:]]
    if variant == 'dynamic':
        return cli.main(['evaluate', map_path, source, '--head-precision', 'int8', *flags])
    openvino_backend.OpenVinoNetwork.predict = _static_predict(variant, source)
    return cli.main(['evaluate', map_path, source, '--head-precision', 'float', *flags])


if __name__ == '__main__':
    sys.exit(main())
