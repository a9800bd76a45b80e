"""One scene head in training: its optimiser, its batches and one step of the loss.

`Mapper.train` runs the schedule (OneCycle learning rate, the soft clamp's curriculum, the
triangulated targets' fade) over a `HeadTrainer`'s steps. Online mapping starts the same
trainer while keyframes still arrive (`warm_step`: the learning rate rises to its peak and
holds there, on whatever the buffer holds by then) and hands it to `Mapper.train`, which
then runs only the schedule's annealing from the peak on (`steps_before_annealing`): the
time a drive takes is training time, and the phase after the drive is the annealing, which
the head needs to become precise. A head that reached the peak needs no triangulated warm
start (and must not get one late: targets that arrive after the head has settled on
reprojection alone pull it apart, test/unit/test_mapping_e2e.py), so finishing skips
triangulation; a drive too short to reach the peak is mapped with a fresh head, as offline.
"""

from __future__ import annotations

import math
import time
import weakref
from typing import Optional, Tuple

import numpy as np
import torch
from torch.profiler import record_function

from ace_ros.core import device as device_lib
from ace_ros.core.buffer import TrainingBuffer
from ace_ros.core.config import MappingConfig
from ace_ros.core.loss import LossOutput, reprojection_loss, soft_clamp_tau, target_loss
from ace_ros.core.network import Head, HeadConfig

#: Where torch's OneCycleLR (default pct_start) peaks, as a share of the schedule.
PEAK_AT = 0.3


def target_weight(progress: float, weight: float, until: float) -> float:
    """Weight of the triangulated targets at `progress` = iteration / total: `weight` for
    the first half of `until`, then fading linearly to 0 at `until`."""
    if progress >= until:
        return 0.0
    return weight * min(1.0, 2.0 * (until - progress) / until)


#: Training while collecting rises to the learning-rate peak over the schedule's warm-up
#: (PEAK_AT of it), at most this many steps: it ends where the drive ends, not at a length
#: known ahead.
MAX_WARMUP_STEPS = 1000


def steps_before_annealing(iterations: int) -> int:
    """Steps of a OneCycle schedule before its annealing, when that annealing is
    `iterations` long: a head trained to the peak while keyframes arrived goes on with the
    schedule's last (1 - PEAK_AT), from the peak down.

    >>> steps_before_annealing(7000)
    3000
    """
    return int(round(iterations * PEAK_AT / (1.0 - PEAK_AT)))


class HeadTrainer:
    """A fresh head for `cfg` with AdamW, stepped on a buffer that may grow between steps.

    Batches walk a permutation of the buffer's cells (a new one at each epoch, and whenever
    the buffer has grown since the last one). Not thread-safe: one thread steps it (online
    mapping's worker while keyframes arrive, then `finish`).
    """

    def __init__(self, cfg: MappingConfig, device: torch.device, feature_dim: int,
                 scene_mean: np.ndarray, generator: torch.Generator) -> None:
        self.cfg = cfg
        self.device = device
        self.generator = generator
        self.head = Head(HeadConfig(num_blocks=cfg.head_blocks, channels=cfg.head_channels,
                                    in_channels=feature_dim,
                                    context_channels=feature_dim if cfg.global_context else 0)
                         ).to(device)
        self.head.scene_mean.copy_(torch.as_tensor(scene_mean, dtype=torch.float32))
        self.head.train()
        # Fused: one kernel for all parameters, with the step count on the device (the
        # unfused one reads it on the host at every step); 0.5 instead of 2.9 ms per step
        # for the 128-wide head on 2 CPU cores.
        self.optimizer = torch.optim.AdamW(self.head.parameters(), lr=cfg.learning_rate,
                                           weight_decay=cfg.weight_decay, fused=True)
        # Loss scaling only for fp16 (bf16 has fp32's range).
        self.scaler = torch.amp.GradScaler('cuda', enabled=device.type == 'cuda' and (
            device_lib.precision(device, cfg.mixed_precision) == 'fp16'))
        #: Steps taken before the schedule (`warm_step`), their seconds and warm-up length.
        self.warm_steps = 0
        self.warm_s = 0.0
        self.warmup_steps = 0
        self._warmup: Optional[torch.optim.lr_scheduler.OneCycleLR] = None
        #: The loss terms of the latest step (None before the first).
        self.last: Optional[LossOutput] = None
        self._order: Optional[torch.Tensor] = None
        self._order_size = 0
        self._cursor = 0
        self._tables_of: Tuple[Optional[weakref.ref], int] = (None, -1)
        self._tables: tuple = ()
        self._contexts: Optional[torch.Tensor] = None

    def step(self, buffer: TrainingBuffer, tau: float, weight: float) -> LossOutput:
        """One iteration at the optimizer's current learning rate: soft clamp `tau` (px),
        triangulated targets weighted by `weight` (0: not computed)."""
        cfg = self.cfg
        batch = min(cfg.batch_size, buffer.size)
        cam_from_world, K, K_inv = self._geometry(buffer)
        # The stage labels cost nothing without a profiler; benchmarks/
        # bench_training_step.py reads them.
        with record_function('train.batch'):
            index = self._next_batch(buffer, batch)
            image = buffer.image_index[index].long()
            features = buffer.features[index]
            context = None
            if self._contexts is not None:
                # Noise on each image's context, new every step, so that the head cannot
                # learn an image by its context and must still read the local features.
                context = self._contexts + cfg.context_noise * torch.randn(
                    self._contexts.shape, generator=self.generator).to(self.device)
        with record_function('train.forward'), \
                device_lib.autocast(self.device, cfg.mixed_precision):
            points = self.head(features, context, image)
        with record_function('train.loss'):
            out = reprojection_loss(
                points, buffer.pixels[index], cam_from_world[image], K[image], K_inv[image],
                tau=tau, depth_min=cfg.depth_min, depth_max=cfg.depth_max,
                max_error_px=cfg.max_reprojection_px,
                invalid_target_depth=cfg.invalid_target_depth)
            loss = out.loss
            if weight > 0:
                loss = loss + weight * target_loss(points, buffer.targets[index],
                                                   cam_from_world[image],
                                                   K[image]) / points.shape[0]
        with record_function('train.backward'):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
        with record_function('train.optimizer'):
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.last = out
        return out

    def warm_step(self, buffer: TrainingBuffer, warmup_steps: int) -> LossOutput:
        """One step before the schedule, on the buffer so far (online mapping, while
        keyframes arrive): the learning rate rises along the schedule's warm-up for
        `warmup_steps` steps (`Mapper.warmup_steps`), then holds at its peak; the soft
        clamp stays at its widest; no targets (none are attached before mapping finishes)."""
        start = time.perf_counter()
        if self._warmup is None:
            self.warmup_steps = max(1, warmup_steps)
            self._warmup = torch.optim.lr_scheduler.OneCycleLR(
                self.optimizer, max_lr=self.cfg.learning_rate,
                total_steps=int(math.ceil(self.warmup_steps / PEAK_AT)) + 1,
                cycle_momentum=False)
        out = self.step(buffer, soft_clamp_tau(0.0, self.cfg.loss_tau_max,
                                               self.cfg.loss_tau_min), 0.0)
        self.warm_steps += 1
        if self.warm_steps < self.warmup_steps:
            self._warmup.step()
        else:  # the peak, held
            for group in self.optimizer.param_groups:
                group['lr'] = self.cfg.learning_rate
        self.warm_s += time.perf_counter() - start
        return out

    @property
    def at_peak(self) -> bool:
        """Whether `warm_step` has reached the learning-rate peak (the schedule's annealing
        can follow)."""
        return self.warm_steps > 0 and self.warm_steps >= self.warmup_steps

    def _next_batch(self, buffer: TrainingBuffer, batch: int) -> torch.Tensor:
        if self._order is None or self._order_size != buffer.size \
                or self._cursor + batch > buffer.size:
            # A new epoch (or the buffer grew): reshuffle the whole buffer.
            self._order = torch.randperm(buffer.size, generator=self.generator).to(self.device)
            self._order_size = buffer.size
            self._cursor = 0
        index = self._order[self._cursor:self._cursor + batch]
        self._cursor += batch
        return index

    def _geometry(self, buffer: TrainingBuffer
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The buffer's per-image tables, rebuilt when it holds more images (or is another
        buffer: online mapping replaces its buffer when it thins the keyframes)."""
        of, n_images = self._tables_of
        if of is None or of() is not buffer or n_images != buffer.n_images:
            self._tables = buffer.geometry_tables()
            self._contexts = buffer.context_table() if self.cfg.global_context else None
            # A weak reference: a buffer replaced by a thinning must be freed, not kept.
            self._tables_of = (weakref.ref(buffer), buffer.n_images)
        return self._tables
