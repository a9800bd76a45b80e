"""Encoder pretraining: one shared encoder trained through many per-scene heads.

The recipe of the ACE paper (many scenes at once, one head per scene, the encoder shared),
with direct scene-coordinate supervision where depth exists: the synthetic rooms come
with exact depth, so each cell's true 3D point is known and an L1 loss on it converges
far faster on a CPU than the reprojection loss alone. Resumable from its checkpoint.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import torch

from ace_ros.core import device as device_lib
from ace_ros.core import geometry
from ace_ros.core.buffer import to_gray
from ace_ros.core.network import Encoder, Head, HeadConfig, cell_centers, image_to_network_input
from ace_ros.core.weights import random_encoder_state

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of an encoder pretraining run."""

    n_scenes: int = field(default=32, metadata={'help': 'synthetic training rooms'})
    first_seed: int = field(default=1000, metadata={'help': 'seed of the first room'})
    frames_per_scene: int = field(default=120, metadata={'help': 'rendered views per room'})
    width: int = field(default=320, metadata={'help': 'render width (px)'})
    height: int = field(default=240, metadata={'help': 'render height (px)'})
    images_per_step: int = field(default=4, metadata={'help': 'images per step (one room)'})
    steps: int = field(default=20000, metadata={'help': 'optimisation steps in total'})
    encoder_lr: float = field(default=3e-4, metadata={'help': 'encoder learning rate'})
    head_lr: float = field(default=2e-3, metadata={'help': 'per-scene head learning rate'})
    head_blocks: int = field(default=0, metadata={'help': 'extra residual blocks per head'})
    checkpoint_every: int = field(default=200, metadata={'help': 'steps between checkpoints'})
    device: str = field(default='auto', metadata={'help': "'auto', 'cpu' or 'cuda'"})
    seed: int = field(default=0, metadata={'help': 'initialisation and sampling seed'})

    def __post_init__(self) -> None:
        for name in ('n_scenes', 'frames_per_scene', 'images_per_step', 'steps',
                     'checkpoint_every'):
            if getattr(self, name) < 1:
                raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
        if self.width % 8 or self.height % 8:
            raise ValueError(f'width and height must be multiples of 8, got {self.width} x '
                             f'{self.height}')


@dataclass
class SceneData:
    """Rendered views of one room at network resolution."""

    gray: torch.Tensor    # (F, 1, H, W) float16 in [0, 1]
    coords: torch.Tensor  # (F, 3, H/8, W/8) float32 world points at cell centres
    valid: torch.Tensor   # (F, H/8, W/8) bool
    mean: np.ndarray      # (3,) mean camera centre


def render_scene(seed: int, cfg: PretrainConfig) -> SceneData:
    """Render one synthetic room with its per-cell ground-truth scene coordinates."""
    from ace_ros.data.synthetic import SyntheticSceneConfig, generate_frames_with_depth
    scene = SyntheticSceneConfig(seed=seed, width=cfg.width, height=cfg.height,
                                 focal=525.0 * cfg.height / 480.0, n_train=cfg.frames_per_scene,
                                 n_test=0, noise_std=2.0, lighting_change=0.2)
    centers = cell_centers(cfg.height, cfg.width).reshape(2, -1).T.numpy().astype(np.float64)
    rows, cols = cfg.height // 8, cfg.width // 8
    grays, coords, valids, positions = [], [], [], []
    for frame, depth in generate_frames_with_depth(scene, 'train'):
        u = np.clip(np.round(centers[:, 0]).astype(int), 0, cfg.width - 1)
        v = np.clip(np.round(centers[:, 1]).astype(int), 0, cfg.height - 1)
        d = depth[v, u].astype(np.float64)
        rays = (np.linalg.inv(frame.K) @ np.c_[centers, np.ones(len(centers))].T).T
        world = geometry.transform_points(frame.world_from_cam, rays * d[:, None])
        grays.append(torch.from_numpy(to_gray(frame.image)).half()[None])
        coords.append(torch.from_numpy(world.T.reshape(3, rows, cols).astype(np.float32)))
        valids.append(torch.from_numpy((d > 0.05).reshape(rows, cols)))
        positions.append(frame.world_from_cam[:3, 3])
    return SceneData(torch.stack(grays), torch.stack(coords), torch.stack(valids),
                     np.mean(positions, axis=0))


class Pretrainer:
    """Holds the shared encoder, one head per scene, their optimisers and the step count."""

    def __init__(self, cfg: PretrainConfig, scenes: List[SceneData]) -> None:
        self.cfg = cfg
        self.device = device_lib.resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.scenes = scenes
        self.encoder = Encoder()
        self.encoder.load_state_dict(random_encoder_state(cfg.seed))
        self.encoder.to(self.device, memory_format=torch.channels_last).train()
        self.heads = torch.nn.ModuleList(
            Head(HeadConfig(num_blocks=cfg.head_blocks)) for _ in scenes).to(self.device)
        for head, scene in zip(self.heads, scenes):
            head.scene_mean.copy_(torch.as_tensor(scene.mean, dtype=torch.float32))
        self.optimizer = torch.optim.AdamW([
            {'params': self.encoder.parameters(), 'lr': cfg.encoder_lr},
            {'params': self.heads.parameters(), 'lr': cfg.head_lr}])
        self.step = 0
        self.rng = np.random.default_rng(cfg.seed)
        self.history: List[float] = []

    def train_step(self) -> float:
        cfg = self.cfg
        scene_index = int(self.rng.integers(len(self.scenes)))
        scene = self.scenes[scene_index]
        pick = torch.from_numpy(self.rng.choice(len(scene.gray), cfg.images_per_step,
                                                replace=False))
        gray = scene.gray[pick].float().to(self.device)
        # Photometric jitter so the encoder does not key on absolute brightness.
        gain = torch.from_numpy(self.rng.uniform(0.7, 1.3, (len(pick), 1, 1, 1))).float()
        gray = (gray * gain.to(self.device)).clamp(0, 1)
        target = scene.coords[pick].to(self.device)
        valid = scene.valid[pick].to(self.device)
        lr_scale = _cosine_warmup(self.step, cfg.steps)
        for group, base in zip(self.optimizer.param_groups, (cfg.encoder_lr, cfg.head_lr)):
            group['lr'] = base * lr_scale
        with device_lib.autocast(self.device):
            features = self.encoder(image_to_network_input(gray).contiguous(
                memory_format=torch.channels_last))
            predicted = self.heads[scene_index].forward_image(features)
        error = (predicted.float() - target).abs().sum(dim=1)[valid]
        # Robust: errors beyond 1 m count linearly but cannot dominate the batch.
        loss = torch.where(error < 1.0, error, 1.0 + torch.log(error)).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return float(error.detach().median())

    def state(self) -> dict:
        return {'step': self.step, 'encoder': self.encoder.state_dict(),
                'heads': self.heads.state_dict(), 'optimizer': self.optimizer.state_dict(),
                'config': asdict(self.cfg), 'history': self.history,
                'rng': self.rng.bit_generator.state}

    def load(self, state: dict) -> None:
        if state['config'] != asdict(self.cfg):
            raise ValueError('checkpoint was written with other settings: '
                             f"{state['config']} vs {asdict(self.cfg)}")
        self.encoder.load_state_dict(state['encoder'])
        self.heads.load_state_dict(state['heads'])
        self.optimizer.load_state_dict(state['optimizer'])
        self.step, self.history = int(state['step']), list(state['history'])
        self.rng.bit_generator.state = state['rng']


def _cosine_warmup(step: int, total: int, warmup: int = 200) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomic torch.save; our own checkpoint holds tensors and plain Python values only."""
    tmp = path.with_suffix('.tmp')
    torch.save(state, tmp)
    tmp.replace(path)


def export_encoder(encoder: Encoder, path: Path) -> None:
    """Write the encoder as fp16 safetensors with the ACE encoder's keys."""
    from safetensors.torch import save_file
    state = {k: v.detach().to('cpu', torch.float16).contiguous()
             for k, v in encoder.state_dict().items()}
    tmp = path.with_suffix('.tmp')
    save_file(state, str(tmp), metadata={'format': 'ace_ros.encoder', 'producer': 'ace_ros'})
    tmp.replace(path)


def pretrain(cfg: PretrainConfig, workdir: Path,
             progress: Optional[Callable[[int, int, float], None]] = None) -> Path:
    """Run (or resume) pretraining in `workdir`; returns the exported encoder path."""
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = workdir / 'checkpoint.pt'
    start = time.perf_counter()
    scenes = []
    for i in range(cfg.n_scenes):
        scenes.append(render_scene(cfg.first_seed + i, cfg))
        _logger.info('rendered room %d/%d (%.0f s)', i + 1, cfg.n_scenes,
                     time.perf_counter() - start)
    trainer = Pretrainer(cfg, scenes)
    if checkpoint.is_file():
        trainer.load(torch.load(checkpoint, map_location=trainer.device, weights_only=True))
        _logger.info('resumed from %s at step %d', checkpoint, trainer.step)
    while trainer.step < cfg.steps:
        median = trainer.train_step()
        trainer.history.append(median)
        if progress:
            progress(trainer.step, cfg.steps, median)
        if trainer.step % cfg.checkpoint_every == 0 or trainer.step == cfg.steps:
            save_checkpoint(checkpoint, trainer.state())
            export_encoder(trainer.encoder, workdir / 'encoder_fp16.safetensors')
    export_encoder(trainer.encoder, workdir / 'encoder_fp16.safetensors')
    return workdir / 'encoder_fp16.safetensors'
