"""What mapping reports and returns: progress, statistics, the trained head, and the
results of `Mapper.train` and `map_frames` (dataclasses; `mapper.py` re-exports them)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from ace_ros.core.buffer import TrainingBuffer
from ace_ros.core.loss import LossOutput
from ace_ros.core.mapfile import MapCloud, SceneMap
from ace_ros.core.network import Head


@dataclass(frozen=True)
class Progress:
    """One progress report: stage is 'buffer' (images) or 'train' (iterations).

    `rate` is items per second since the stage began and `eta_s` the seconds left at that
    rate (nan until measurable).
    """

    stage: str
    done: int
    total: int
    loss: float = math.nan
    valid_fraction: float = math.nan
    median_error_px: float = math.nan
    rate: float = math.nan
    eta_s: float = math.nan


def rate_eta(done: int, total: int, start: float) -> Dict[str, float]:
    """`Progress`'s rate and eta_s for `done` of `total` items since `start` (perf_counter)."""
    elapsed = time.perf_counter() - start
    rate = done / elapsed if elapsed > 0 else math.nan
    return {'rate': rate, 'eta_s': (total - done) / rate if rate > 0 else math.nan}


def eta_text(eta_s: float) -> str:
    """'ETA 43 s' for progress lines; 'ETA unknown' before a rate is measurable."""
    return f'ETA {eta_s:.0f} s' if math.isfinite(eta_s) else 'ETA unknown'


ProgressCallback = Callable[[Progress], None]


class MappingCancelled(RuntimeError):
    """Mapping stopped because `Mapper.cancel` was set (e.g. Ctrl-C in the mapping node)."""


@dataclass
class MappingStats:
    buffer_s: float = 0.0
    train_s: float = 0.0
    iterations: int = 0
    buffer_size: int = 0
    buffer_images: int = 0
    frames_used: int = 0
    frames_without_pose: int = 0
    final_loss: float = math.nan
    final_median_error_px: float = math.nan
    #: seconds spent predicting the map cloud, and its points (0: none)
    cloud_s: float = 0.0
    cloud_points: int = 0
    #: iterations (and their seconds) trained while keyframes arrived (online mapping),
    #: before the `iterations` of the schedule's remainder
    warm_iterations: int = 0
    warm_s: float = 0.0
    loss_history: List[float] = field(default_factory=list)


@dataclass
class TrainingRun:
    """What `Mapper.train` gives back."""
    head: Head
    iterations: int
    loss_history: List[float]
    #: the loss terms of the last iteration (loss, valid fraction, median error in px)
    last: LossOutput


@dataclass
class RegionSplit:
    """What `Mapper.train_regions` gives back: a training run and the buffer part of each
    region, and each buffer image's region (None for a single head on the whole buffer)."""
    runs: List[TrainingRun]
    buffers: List[TrainingBuffer]
    image_regions: Optional[np.ndarray]


@dataclass
class TrainedHead:
    head: Head
    stats: MappingStats
    frame_names: List[str]
    intrinsics: List[List[float]]
    #: the scene points for display (see `map_cloud`), None where none were predicted
    cloud: Optional[MapCloud] = None
    #: a map of several regions (`regions.py`): the heads of regions 1.. (`head` is region
    #: 0's), and each buffer image's context (M, C) and region (M,), which rank the regions
    more_heads: List[Head] = field(default_factory=list)
    region_contexts: Optional[torch.Tensor] = None
    region_labels: Optional[torch.Tensor] = None


@dataclass
class MappingResult:
    """What `map_frames` gives back."""
    scene_map: SceneMap
    stats: MappingStats
    #: where it ran and at which precision, e.g. 'cpu (2 threads, fp32, int8 encoder)'
    device: str
