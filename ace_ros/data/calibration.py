"""Images to quantize an encoder on: frames of a procedural synthetic room.

Scene-agnostic, so any map can use the quantized encoder. Core quantizes (`openvino_backend`)
but makes no images; the tools and nodes hand this in (`runtime.make_runtime(...,
calibration=calibration_inputs)`). Changing these images changes the int8 encoder: bump
`openvino_backend.INT8_RECIPE` with them, as it keys the disk cache.
"""

from __future__ import annotations

from typing import List

import numpy as np
import torch

from ace_ros.core.buffer import to_gray
from ace_ros.core.network import image_to_network_input
from ace_ros.data.synthetic import SyntheticSceneConfig, generate_frames

CALIBRATION_FRAMES = 16


def calibration_inputs(height: int, width: int) -> List[np.ndarray]:
    """Encoder inputs (1, 1, height, width) from a procedural synthetic room, with noise and
    lighting changes."""
    scene = SyntheticSceneConfig(seed=77, width=width, height=height, focal=525.0 * height / 480,
                                 n_train=CALIBRATION_FRAMES, n_test=0, noise_std=2.0,
                                 lighting_change=0.2)
    return [image_to_network_input(torch.from_numpy(to_gray(frame.image))[None, None])
            .float().numpy() for frame in generate_frames(scene, 'train')]
