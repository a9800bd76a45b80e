"""Encoder weights: where they come from, and loading them safely.

Accepted files: safetensors, or a torch state dict read with `weights_only=True` (never
an arbitrary unpickle), holding exactly the ACE encoder's keys and shapes, fp32 or fp16.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import torch

from ace_ros.core.mapfile import encoder_identity
from ace_ros.core.network import ENCODER_SHAPES, Encoder, check_encoder_state

_logger = logging.getLogger(__name__)

MAX_ENCODER_BYTES = 128 * 1024 * 1024
#: The encoder shipped inside the package (fp16 safetensors), once the project has one.
SHIPPED_ENCODER = (Path(__file__).resolve().parent.parent / 'weights'
                   / 'ace_ros_encoder.safetensors')
#: Spec of the deterministic random encoder: the fallback until weights are shipped.
RANDOM_ENCODER = 'random'


def random_encoder_state(seed: int = 0) -> Dict[str, torch.Tensor]:
    """Deterministic, platform-independent He-uniform initialised encoder weights.

    Generated with numpy's PCG64 so the identity hash is the same on every machine.
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    state = {}
    for name in sorted(ENCODER_SHAPES):
        shape = ENCODER_SHAPES[name]
        if name.endswith('.weight'):
            fan_in = int(np.prod(shape[1:]))
            bound = math.sqrt(6.0 / fan_in)
            values = rng.uniform(-bound, bound, size=shape)
        else:
            values = np.zeros(shape)
        state[name] = torch.from_numpy(values.astype(np.float32))
    return state


def load_encoder_state(path: str | os.PathLike) -> Dict[str, torch.Tensor]:
    """Read and check an encoder state dict from `path` (safetensors or torch file)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f'encoder file {path} does not exist')
    size = path.stat().st_size
    if size > MAX_ENCODER_BYTES:
        raise ValueError(f'encoder file {path} is {size} bytes; an ACE encoder is ~22 MB '
                         f'(fp32), refusing files over {MAX_ENCODER_BYTES} bytes')
    try:
        if path.suffix == '.safetensors':
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location='cpu', weights_only=True)
    except Exception as error:  # noqa: BLE001 - any parse failure means the same thing
        raise ValueError(f'encoder file {path} could not be read as a state dict: '
                         f'{error}') from error
    if not isinstance(state, dict):
        raise ValueError(f'encoder file {path} holds a {type(state).__name__}, '
                         'expected a state dict')
    check_encoder_state(state, str(path))
    return {k: v.float() for k, v in state.items()}


def resolve_encoder_state(spec: str) -> Tuple[Dict[str, torch.Tensor], str]:
    """'' (shipped encoder, else the random one), 'random[:SEED]' or a path -> (state, label)."""
    if spec == '':
        if SHIPPED_ENCODER.is_file():
            return load_encoder_state(SHIPPED_ENCODER), f'shipped ({SHIPPED_ENCODER.name})'
        _logger.warning('no shipped encoder weights found; using the deterministic random '
                        'encoder (accuracy on real scenes is far lower)')
        spec = RANDOM_ENCODER
    if spec == RANDOM_ENCODER or spec.startswith(RANDOM_ENCODER + ':'):
        seed_text = spec.partition(':')[2] or '0'
        if not seed_text.isdigit():
            raise ValueError(f"encoder spec '{spec}': expected 'random' or 'random:SEED'")
        return random_encoder_state(int(seed_text)), f'random (seed {seed_text})'
    return load_encoder_state(spec), spec


def build_encoder(spec: str, device: torch.device) -> Tuple[Encoder, str, str]:
    """Frozen encoder on `device` in eval mode -> (encoder, identity sha256, label)."""
    state, label = resolve_encoder_state(spec)
    encoder = Encoder()
    encoder.load_state_dict(state)
    encoder.eval().requires_grad_(False)
    encoder = encoder.to(device=device, memory_format=torch.channels_last)
    return encoder, encoder_identity(state), label
