"""The ACE network: a frozen scene-agnostic encoder and a per-scene regression head.

Built from the published description of the architecture (see ACE_NOTES.md); the
encoder's parameter names and shapes match the published encoder file so that a
compatible state dict loads with `Encoder.load_state_dict`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

ENCODER_STRIDE = 8
FEATURE_DIM = 512
GRAY_MEAN = 0.4
GRAY_STD = 0.25

#: parameter name -> shape of every tensor in a compatible encoder state dict.
ENCODER_SHAPES: Dict[str, tuple] = {}
for _name, (_cin, _cout, _k) in {
        'conv1': (1, 32, 3), 'conv2': (32, 64, 3), 'conv3': (64, 128, 3),
        'conv4': (128, 256, 3),
        'res1_conv1': (256, 256, 3), 'res1_conv2': (256, 256, 1), 'res1_conv3': (256, 256, 3),
        'res2_conv1': (256, 512, 3), 'res2_conv2': (512, 512, 1), 'res2_conv3': (512, 512, 3),
        'res2_skip': (256, 512, 1)}.items():
    ENCODER_SHAPES[f'{_name}.weight'] = (_cout, _cin, _k, _k)
    ENCODER_SHAPES[f'{_name}.bias'] = (_cout,)


class Encoder(nn.Module):
    """Grayscale image (B, 1, H, W) normalised -> features (B, 512, ceil(H/8), ceil(W/8))."""

    def __init__(self) -> None:
        super().__init__()
        for name, shape in ENCODER_SHAPES.items():
            if name.endswith('.weight'):
                cout, cin, k, _ = shape
                stride = 2 if name[:5] in ('conv2', 'conv3', 'conv4') else 1
                setattr(self, name[:-7], nn.Conv2d(cin, cout, k, stride, padding=k // 2))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(image))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        x = F.relu(self.conv4(x))
        res = F.relu(self.res1_conv1(x))
        res = F.relu(self.res1_conv2(res))
        res = F.relu(self.res1_conv3(res))
        x = x + res
        res = F.relu(self.res2_conv1(x))
        res = F.relu(self.res2_conv2(res))
        res = F.relu(self.res2_conv3(res))
        return self.res2_skip(x) + res


def check_encoder_state(state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise ValueError unless `state` has exactly the ACE encoder's keys and shapes."""
    missing = sorted(set(ENCODER_SHAPES) - set(state))
    unexpected = sorted(set(state) - set(ENCODER_SHAPES))
    if missing or unexpected:
        raise ValueError(f'{source}: not an ACE encoder state dict: missing keys {missing[:5]}, '
                         f'unexpected keys {unexpected[:5]}')
    for name, shape in ENCODER_SHAPES.items():
        if not isinstance(state[name], torch.Tensor):
            raise ValueError(f'{source}: {name} is a {type(state[name]).__name__}, '
                             'expected a tensor')
        if tuple(state[name].shape) != shape:
            raise ValueError(f'{source}: {name} has shape {tuple(state[name].shape)}, '
                             f'expected {shape}')
        if not state[name].is_floating_point():
            raise ValueError(f'{source}: {name} has dtype {state[name].dtype}, expected float')


@dataclass(frozen=True)
class HeadConfig:
    """Shape of the regression head; stored in the map file."""

    num_blocks: int = 1
    #: Width of the head's layers (and of its input unless `in_channels` says otherwise).
    channels: int = FEATURE_DIM
    max_inv_scale: float = 4.0   # max_s: bounds the homogeneous scale from below
    min_inv_scale: float = 0.01  # min_s: bounds it from above
    #: Width of the input features when it differs from `channels` (0: the same): a 1x1
    #: projection + ReLU narrows them first. A 256-wide head on 512 features costs ~30 % of
    #: the 512-wide head's arithmetic (training on a CPU).
    in_channels: int = 0
    #: Width of the per-image context vector added to the first layer (0: none). The context
    #: is `global_context` of the image's features: local features alone cannot tell apart
    #: surfaces that look alike (a room seen from all sides), the image's mean feature can.
    context_channels: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _pointwise(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution on flat (N, C) features (one matrix product) or on (B, C, H, W);
    a layer that is not a convolution (the int8 head's linear layers) is applied as it is."""
    # Feature maps stay in the encoder's layout: no transpose copy.
    if x.dim() == 4 or not isinstance(layer, nn.Conv2d):
        return layer(x)
    return F.linear(x, layer.weight.flatten(1), layer.bias)


class _ResBlock(nn.Module):
    """Three 1x1 conv + ReLU layers added to the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 1)
        self.conv2 = nn.Conv2d(channels, channels, 1)
        self.conv3 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = F.relu(_pointwise(self.conv1, x))
        res = F.relu(_pointwise(self.conv2, res))
        res = F.relu(_pointwise(self.conv3, res))
        return x + res


class Head(nn.Module):
    """Features (N, 512) -> scene coordinates (N, 3) in the world frame, or feature maps
    (B, 512, H, W) -> (B, 3, H, W).

    The layers are 1x1 convolutions (the map file stores conv-shaped weights), evaluated as
    matrix products on flat features (training batches of shuffled cells).

    The last layer predicts homogeneous coordinates; the homogeneous scale h is kept in
    [1/max_inv_scale, 1/min_inv_scale] so early predictions stay near the scene mean.
    """

    def __init__(self, config: HeadConfig = HeadConfig()) -> None:
        super().__init__()
        self.config = config
        c = config.channels
        # Created only when used, so heads as ACE describes them keep its layout's keys.
        self._project = config.in_channels not in (0, c) or config.context_channels > 0
        if self._project:
            self.inp = nn.Conv2d(config.in_channels or c, c, 1)
        if config.context_channels:
            self.ctx = nn.Conv2d(config.context_channels, c, 1)
        self.blocks = nn.ModuleList(_ResBlock(c) for _ in range(1 + config.num_blocks))
        self.fc1 = nn.Conv2d(c, c, 1)
        self.fc2 = nn.Conv2d(c, c, 1)
        self.out = nn.Conv2d(c, 4, 1)
        self.register_buffer('scene_mean', torch.zeros(3))
        # softplus(0, beta) + 1/max_s == 1: an untrained head starts at h = 1.
        self._beta = math.log(2) / (1.0 - 1.0 / config.max_inv_scale)

    def forward(self, features: torch.Tensor, context: Optional[torch.Tensor] = None,
                context_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Scene coordinates of `features`: (N, C) cells or (B, C, H, W) feature maps.

        A head with context (`config.context_channels`) takes each cell's image context:
        `context` (N, Cc) per cell, (Cc,) for all cells, or (M, Cc) per image with
        `context_index` (N,) naming each cell's image (training: the projection then runs
        once per image, not per cell). Without `context`, flat `features` are taken to be
        the cells of one image and a map each its own image: their `global_context`.
        """
        x = features
        if not torch.is_autocast_enabled(x.device.type):
            x = x.to(self.out.weight.dtype)  # the buffer's fp16 features into an fp32 head
        if self._project:
            x = _pointwise(self.inp, x)
            if self.config.context_channels:
                x = x + self._context_term(features, context, context_index).to(x.dtype)
            x = F.relu(x)
        for block in self.blocks:
            x = block(x)
        x = F.relu(_pointwise(self.fc1, x))
        x = F.relu(_pointwise(self.fc2, x))
        out = _pointwise(self.out, x).float()
        h = F.softplus(out[:, 3:4], beta=self._beta) + 1.0 / self.config.max_inv_scale
        h = h.clamp(max=1.0 / self.config.min_inv_scale)
        mean = self.scene_mean if out.dim() == 2 else self.scene_mean[:, None, None]
        return out[:, :3] / h + mean

    def _context_term(self, features: torch.Tensor, context: Optional[torch.Tensor],
                      context_index: Optional[torch.Tensor]) -> torch.Tensor:
        """The context's contribution to the first layer, shaped to add to its output."""
        if context is None:
            context = global_context(features)  # (C,) or (B, C)
        context = context.to(self.ctx.weight.dtype)
        term = F.linear(context.reshape(-1, context.shape[-1]), self.ctx.weight.flatten(1),
                        self.ctx.bias)
        if features.dim() == 4:
            return term.reshape(-1, term.shape[1], 1, 1)
        if context_index is not None:
            return term[context_index]
        return term  # (N, c) per cell or (1, c) for all

    def forward_image(self, features: torch.Tensor) -> torch.Tensor:
        """(B, 512, H, W) -> (B, 3, H, W); the same as `forward` on a feature map."""
        if features.dim() != 4:
            raise ValueError(f'expected (B, C, H, W) features, got {tuple(features.shape)}')
        return self(features)

    def weights(self) -> Dict[str, torch.Tensor]:
        """The learned tensors (everything but the scene mean), for the map file."""
        return {k: v for k, v in self.state_dict().items() if k != 'scene_mean'}


def global_context(features: torch.Tensor) -> torch.Tensor:
    """An image's context vector: the mean of its cells' features scaled to norm sqrt(C)
    (about the size of one cell's feature). (N, C) cells -> (C,); (B, C, H, W) -> (B, C)."""
    mean = features.float().mean(dim=(2, 3) if features.dim() == 4 else 0)
    return mean * (features.shape[1] ** 0.5) / mean.norm(dim=-1, keepdim=True).clamp(min=1e-6)


def image_to_network_input(gray: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) grayscale in [0, 1] -> the encoder's normalised input."""
    return (gray - GRAY_MEAN) / GRAY_STD


def cell_centers(height: int, width: int, device: torch.device | str = 'cpu') -> torch.Tensor:
    """Pixel position (x, y) of each output cell for an input of (height, width).

    Returns:
        (2, ceil(H/8), ceil(W/8)) float32; cell (i, j) is centred on the pixel block
        [8j, 8j+8) x [8i, 8i+8), i.e. at 8 j + 3.5 in OpenCV pixel coordinates.
    """
    rows = -(-height // ENCODER_STRIDE)
    cols = -(-width // ENCODER_STRIDE)
    ys = torch.arange(rows, dtype=torch.float32, device=device) * ENCODER_STRIDE + 3.5
    xs = torch.arange(cols, dtype=torch.float32, device=device) * ENCODER_STRIDE + 3.5
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing='ij')
    return torch.stack([grid_x, grid_y])
