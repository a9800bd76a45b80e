"""Mapping: fill the training buffer from posed frames, then train the scene head."""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ace_ros.core import device as device_lib
from ace_ros.core import geometry
from ace_ros.core.augment_torch import augment_batch
from ace_ros.core.buffer import EncoderInput, TrainingBuffer, prepare_image
from ace_ros.core.config import MappingConfig, config_to_dict
from ace_ros.core.map_cloud import MAX_CLOUD_POINTS, predict_cloud
from ace_ros.core.mapping_results import (  # noqa: F401 - re-exported: callers import them here
    MappingCancelled, MappingResult, MappingStats, Progress, ProgressCallback, RegionSplit,
    TrainedHead, TrainingRun, eta_text, rate_eta)
from ace_ros.core.mapfile import MapCloud, RegionHead, SceneMap
from ace_ros.core.loss import soft_clamp_tau
from ace_ros.core.network import Head
from ace_ros.core.regions import regions_for
from ace_ros.core.runtime import make_runtime, Runtime
from ace_ros.core.training import (MAX_WARMUP_STEPS, PEAK_AT, HeadTrainer,
                                   steps_before_annealing, target_weight)
from ace_ros.core.triangulation import FramePoints, triangulate_frames
from ace_ros.core.types import Frame

_logger = logging.getLogger(__name__)

#: Under a time budget, encoding stops after this share of it, so that training keeps most:
#: accuracy follows the iterations more than the buffer's size. Where encoding is fast (GPU,
#: native bf16) the buffer fills well before. Measured on an AVX2-only CPU, demo room, 490 s
#: budget: a 40 % share gave 265 encodings and 365 iterations (90.0 % within 5cm/5deg,
#: 70.0 % within 1cm/1deg); 25 % gave 176 encodings and 555 iterations (93.3 %, 83.3 %).
BUFFER_SHARE_OF_BUDGET = 0.25
#: A training iteration costs this much more than the measured forward and backward pass.
STEP_OVERHEAD = 1.15
#: Under a budget too tight for them, this many iterations run anyway (with a warning).
MIN_BUDGETED_ITERATIONS = 100
#: Frames a mapper that augments on the device (`Mapper.augment_on_device`) uploads and
#: augments at once: one `grid_sample` per batch instead of three OpenCV resamplings per image.
DEVICE_AUGMENT_BATCH = 16


class Mapper:
    """Trains a Head for one scene against a frozen encoder, on `cfg.device`."""

    def __init__(self, cfg: MappingConfig, runtime: Runtime) -> None:
        """`runtime`: the device and the frozen encoder (none where only `train` runs)."""
        # The resolved choice, so the map records what its features are.
        self.cfg = dataclasses.replace(
            cfg, encoder_precision=runtime.encoder_precision(cfg.encoder_precision))
        self.runtime = runtime
        self.device = runtime.device
        self._features = None  # built at the first image: an int8 encoder takes a while
        torch.manual_seed(cfg.seed)
        self._rng = np.random.default_rng(cfg.seed)
        self._torch_rng = torch.Generator().manual_seed(cfg.seed)
        #: Set from another thread to stop encoding or training at the next image/iteration.
        self.cancel = threading.Event()
        #: Augment the buffer's images on the device in batches (`augment_torch`): on a GPU;
        #: on a CPU OpenCV is faster (52.5 against 9.6 ms per 640x480 image on 1 core).
        self.augment_on_device = self.device.type == 'cuda'

    def _check_cancel(self, what: str) -> None:
        if self.cancel.is_set():
            raise MappingCancelled(f'mapping cancelled during {what}')

    def planned_cells(self, n_frames: int) -> int:
        """Buffer cells for `cfg.max_buffer_passes` passes over `n_frames` frames."""
        cfg = self.cfg
        return min(cfg.buffer_size, n_frames * cfg.max_buffer_passes * cfg.samples_per_image)

    def new_buffer(self, n_frames: int) -> TrainingBuffer:
        """An empty buffer sized for `cfg.max_buffer_passes` passes over `n_frames` frames."""
        return TrainingBuffer(self.planned_cells(n_frames), self.device)

    def add_to_buffer(self, buffer: TrainingBuffer, frame: Frame,
                      points: Optional[FramePoints] = None,
                      augmented: Optional[EncoderInput] = None) -> int:
        """Augment, encode and sample one posed frame into `buffer`; returns cells added.
        `points` are the frame's triangulated points (cells they fall in become targets);
        `augmented`, the frame already augmented on the device (`augment_on_device`)."""
        cfg = self.cfg
        encoded = augmented if augmented is not None else prepare_image(
            frame, cfg.image_height, self._rng, cfg)
        features = self._encoder_features(encoded.gray)
        return buffer.add_image(encoded, features, cfg.samples_per_image, self._torch_rng,
                                points.world if points is not None else None, frame.name)

    def _augment_on_device(self, frames: Sequence[Frame]) -> List[Optional[EncoderInput]]:
        """`frames` augmented in batches on the device (frames of one size together): each
        one's gray image stays there (for the encoder), its geometry and valid mask come to
        the host (for the buffer's cell sampling)."""
        out: List[Optional[EncoderInput]] = [None] * len(frames)
        by_size: Dict[tuple, List[int]] = {}
        for i, frame in enumerate(frames):
            by_size.setdefault(frame.image.shape, []).append(i)
        for members in by_size.values():
            images = torch.from_numpy(np.stack([frames[i].image for i in members]))
            batch = augment_batch(
                images.to(self.device), np.stack([frames[i].K for i in members]),
                np.stack([geometry.invert_pose(frames[i].world_from_cam) for i in members]),
                self.cfg.image_height, self.cfg, self._torch_rng)
            valid = batch.valid.cpu().numpy()
            for j, i in enumerate(members):
                h, w = batch.sizes[j]
                out[i] = EncoderInput(batch.gray[j, :h, :w], batch.K[j],
                                      batch.cam_from_world[j], valid[j, :h, :w])
        return out

    @staticmethod
    def attach_targets(buffer: TrainingBuffer, frames: Sequence[Frame],
                       points: Sequence[FramePoints]) -> int:
        """Targets for the cells of images already in `buffer` (matched to `frames` by
        name); returns how many cells got one."""
        by_name = {f.name: p for f, p in zip(frames, points)}
        return sum(buffer.attach_targets(image, by_name[name].world)
                   for image, name in enumerate(buffer.sources) if name in by_name)

    def prepare_encoder(self) -> None:
        """Builds the encoder mapping runs: for int8 read from the disk cache, or quantized
        (~25 s on 2 cores, once per encoder). `map` calls it first, so that a time budget
        shares out what it leaves between encoding and training."""
        if self._features is None:
            self._features = self.runtime.mapping_encoder(self.cfg.encoder_precision,
                                                          self.cfg.mixed_precision)

    def _encoder_features(self, gray: np.ndarray) -> torch.Tensor:
        self.prepare_encoder()
        return self._features(gray)

    def fill_buffer(self, frames: Sequence[Frame],
                    progress: Optional[ProgressCallback] = None,
                    buffer: Optional[TrainingBuffer] = None,
                    passes_done: int = 0, deadline: Optional[float] = None,
                    points: Optional[Sequence[FramePoints]] = None) -> TrainingBuffer:
        """Encode augmented passes over `frames` until the buffer is full, passes run out,
        or `time.perf_counter()` passes `deadline` (once 2 images are in).

        Online mapping encodes the first pass as keyframes arrive and hands that `buffer`
        in with `passes_done=1`, so only the remaining passes run here. `points`, aligned
        with `frames`, are their triangulated points.
        """
        cfg = self.cfg
        if buffer is None:
            buffer = self.new_buffer(len(frames))
        images_to_fill = -(-(buffer.capacity - buffer.size) // cfg.samples_per_image)
        total = min(len(frames) * max(0, cfg.max_buffer_passes - passes_done), images_to_fill)
        done = 0
        start = time.perf_counter()
        chunk = DEVICE_AUGMENT_BATCH if self.augment_on_device else 1
        for _ in range(passes_done, cfg.max_buffer_passes):
            if buffer.full:
                break
            order = self._rng.permutation(len(frames))
            augmented: dict = {}
            for position, index in enumerate(order):
                if self.augment_on_device and position % chunk == 0:
                    upcoming = order[position:position + chunk]
                    augmented = dict(zip(upcoming, self._augment_on_device(
                        [frames[i] for i in upcoming])))
                self._check_cancel('encoding')
                if deadline is not None and buffer.n_images >= 2 \
                        and time.perf_counter() >= deadline:
                    _logger.info('time budget: the buffer stops at %d encoded images (%d '
                                 'cells) to leave time for training', buffer.n_images,
                                 buffer.size)
                    return buffer
                self.add_to_buffer(buffer, frames[index],
                                   points[index] if points is not None else None,
                                   augmented.get(index))
                done += 1
                if progress:
                    # Frames with invalid cells give fewer samples: the total may grow.
                    total = max(total, done)
                    progress(Progress('buffer', done, total, **rate_eta(done, total, start)))
                if buffer.full:
                    return buffer
        return buffer

    def iterations_for(self, buffer_size: int, share: float = 1.0) -> int:
        """The schedule's iterations for a buffer of `buffer_size` cells: `cfg.epochs` over
        it, capped at `share` of `cfg.max_iterations` (a region's share of the cells)."""
        cfg = self.cfg
        iterations = max(1, int(math.ceil(cfg.epochs * buffer_size / cfg.batch_size)))
        if not cfg.max_iterations:
            return iterations
        return min(iterations, max(1, int(round(cfg.max_iterations * share))))

    def _step_seconds(self, head: Head, buffer: TrainingBuffer, batch: int) -> float:
        """Measured cost of one training iteration (forward and backward of a batch)."""
        features = buffer.features[:batch]
        times = []
        for _ in range(3):  # the first one warms up the kernels
            start = time.perf_counter()
            with device_lib.autocast(self.device, self.cfg.mixed_precision):
                points = head(features)
            points.float().square().mean().backward()
            if self.device.type == 'cuda':
                torch.cuda.synchronize(self.device)
            times.append(time.perf_counter() - start)
        head.zero_grad(set_to_none=True)
        return min(times[1:])

    def budgeted_iterations(self, head: Head, buffer: TrainingBuffer,
                            time_left_s: Optional[float], planned_size: int = 0,
                            share: float = 1.0) -> int:
        """The schedule's iterations, or fewer where they would not fit in `time_left_s`.

        `planned_size` is the buffer size the schedule is for when a budget cut encoding
        short: the cut saves time for training, so it must not shorten the schedule too.
        `share`: see `iterations_for`.
        """
        iterations = self.iterations_for(max(buffer.size, planned_size), share)
        if time_left_s is None:
            return iterations
        step_s = self._step_seconds(head, buffer, min(self.cfg.batch_size, buffer.size))
        # On top of forward and backward: batch gathering, loss, optimiser step (measured:
        # 685 ms per iteration for a 603 ms probe on a 2-core AVX2 CPU).
        fitting = int(max(0.0, time_left_s) / (STEP_OVERHEAD * step_s))
        if fitting >= iterations:
            return iterations
        floor = min(iterations, MIN_BUDGETED_ITERATIONS)
        if fitting < floor:
            _logger.warning('the time budget leaves %.0f s for training, %d iterations of %.0f '
                            'ms; training %d anyway (raise time_budget_s, or 0 for none)',
                            time_left_s, fitting, 1000 * step_s, floor)
            return floor
        _logger.info('time budget: %d of the schedule\'s %d iterations fit in the %.0f s left '
                     '(%.0f ms each)', fitting, iterations, time_left_s, 1000 * step_s)
        return fitting

    @staticmethod
    def _refit_iterations(planned: int, done: int, seconds_per_iteration: float,
                          time_left_s: float, schedule: int) -> int:
        """The iteration count that ends training in `time_left_s` at the measured rate, or
        `planned` when that is within 3 %; at most `schedule`, at least `done` + 1 and the
        budget's floor."""
        fitting = done + int(max(0.0, time_left_s) / seconds_per_iteration)
        floor = max(done + 1, min(planned, MIN_BUDGETED_ITERATIONS))
        fitting = max(floor, min(schedule, fitting))
        if abs(fitting - planned) <= 0.03 * planned:
            return planned
        _logger.info('time budget: %d iterations instead of %d at the measured %.0f ms each',
                     fitting, planned, 1000 * seconds_per_iteration)
        return fitting

    def new_trainer(self, feature_dim: int, scene_mean: np.ndarray) -> HeadTrainer:
        """A fresh head with its optimiser on the mapping device (the seeded generator)."""
        return HeadTrainer(self.cfg, self.device, feature_dim, scene_mean, self._torch_rng)

    def warmup_steps(self, n_frames: int) -> int:
        """How long a trainer started while keyframes arrive rises to the peak (`warm_step`):
        the warm-up of the schedule for `n_frames` frames' buffer, at most MAX_WARMUP_STEPS."""
        return min(MAX_WARMUP_STEPS,
                   int(PEAK_AT * self.iterations_for(self.planned_cells(n_frames))))

    def train(self, buffer: TrainingBuffer, scene_mean: np.ndarray,
              progress: Optional[ProgressCallback] = None,
              time_left_s: Optional[float] = None, planned_size: int = 0,
              trainer: Optional[HeadTrainer] = None, share: float = 1.0) -> TrainingRun:
        """Train a fresh head on `buffer`, or go on with `trainer`'s (see below).

        With `time_left_s` the schedule (for `planned_size` cells, see `budgeted_iterations`)
        is compressed to the iterations that fit in it (measured on the first batches); the
        OneCycle schedule keeps its shape. A `trainer` warmed to the peak while keyframes
        arrived (`HeadTrainer.warm_step`, `at_peak`) goes on with the schedule's annealing
        only: the iterations that fit run from the peak down, without triangulated targets.
        `share` is the part of the scene's cells `buffer` holds (a region's; see
        `iterations_for`).

        Raises:
            ValueError: `trainer` has not reached the peak.
        """
        cfg = self.cfg
        begin = time.perf_counter()
        warm = trainer is not None
        if trainer is None:
            trainer = self.new_trainer(buffer.features.shape[1], scene_mean)
        elif not trainer.at_peak:
            raise ValueError(f'the trainer took {trainer.warm_steps} of its '
                             f'{trainer.warmup_steps} warm-up steps: train a fresh head')
        head = trainer.head
        iterations = self.budgeted_iterations(head, buffer, time_left_s, planned_size, share)
        # Under a budget the count is checked against the real rate of the first iterations:
        # the probe's two batches can catch another process's burst.
        recheck_at = max(10, min(50, iterations // 5)) if time_left_s is not None else 0
        schedule_iterations = self.iterations_for(max(buffer.size, planned_size), share)
        # Virtual steps of the whole schedule before this run's first (0 for a fresh head).
        skipped = steps_before_annealing(iterations) if warm else 0
        if warm:
            _logger.info('training goes on from %d steps taken while keyframes arrived: %d '
                         'more, the schedule from step %d of %d', trainer.warm_steps,
                         iterations, skipped, skipped + iterations)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            trainer.optimizer, max_lr=cfg.learning_rate, total_steps=skipped + iterations,
            cycle_momentum=False, last_epoch=skipped - 1)
        history: List[float] = []
        report_every = max(1, iterations // 200)
        start = time.perf_counter()
        checked = (start, 0)  # time and iteration of the last rate check
        iteration = 0
        while iteration < iterations:
            # And again every 10 % up to 90 %: the rate can drift (demo room, 2 AVX2 cores:
            # 627 ms per iteration over the first 50, 667 ms over the rest; 27 s over).
            if recheck_at and iteration == recheck_at < 0.9 * iterations:
                recheck_at += max(1, iterations // 10)
                now = time.perf_counter()
                rate = (now - checked[0]) / (iteration - checked[1])  # since the last check
                checked = (now, iteration)
                refit = self._refit_iterations(iterations, iteration, rate,
                                               time_left_s - (now - begin), schedule_iterations)
                if refit != iterations:
                    iterations = refit
                    # The same OneCycle shape over the new length, resumed at this step.
                    schedule = torch.optim.lr_scheduler.OneCycleLR(
                        trainer.optimizer, max_lr=cfg.learning_rate,
                        total_steps=skipped + iterations, cycle_momentum=False,
                        last_epoch=skipped + iteration - 1)
                    report_every = max(1, iterations // 200)
            self._check_cancel('training')
            at = (skipped + iteration) / (skipped + iterations)
            out = trainer.step(buffer, soft_clamp_tau(at, cfg.loss_tau_max, cfg.loss_tau_min),
                               0.0 if warm else target_weight(at, cfg.target_weight,
                                                              cfg.target_until))
            schedule.step()
            if iteration % report_every == 0 or iteration == iterations - 1:
                history.append(float(out.loss.detach()))
                if progress:
                    progress(Progress('train', iteration + 1, iterations, history[-1],
                                      out.valid_fraction, out.median_error_px,
                                      **rate_eta(iteration + 1, iterations, start)))
            iteration += 1
        head.eval()
        return TrainingRun(head, iterations, history, out)

    def map(self, frames: Sequence[Frame],
            progress: Optional[ProgressCallback] = None,
            buffer: Optional[TrainingBuffer] = None, passes_done: int = 0,
            budget_start: Optional[float] = None,
            trainer: Optional[HeadTrainer] = None) -> TrainedHead:
        """Buffer + training for the posed frames in `frames`.

        `buffer` and `passes_done` continue a buffer already filled with that many passes
        over `frames` (online mapping); see `fill_buffer`. `budget_start`, a
        `time.perf_counter()` value, is when the time budget began (default: now): what a
        caller did since (online mapping: encoding the queued keyframes) counts as buffer
        encoding. `trainer`, a head trained while keyframes arrived, is trained on (see
        `train`) instead of a fresh one if it reached the learning-rate peak.
        """
        posed = [f for f in frames if f.world_from_cam is not None]
        stats = MappingStats(frames_used=len(posed),
                             frames_without_pose=len(frames) - len(posed))
        if stats.frames_without_pose:
            _logger.warning('%d of %d frames have no pose and are not used',
                            stats.frames_without_pose, len(frames))
        if len(posed) < 2:
            raise ValueError(f'mapping needs at least 2 posed frames, got {len(posed)}')
        begin = time.perf_counter() if budget_start is None else budget_start
        # Inside the budget (it bounds the wall time), but outside the buffer's share:
        # quantizing a new encoder at the first image took 89 of 379 images from the buffer.
        # Time spent before this call (online: encoding queued keyframes) is buffer time.
        prepared = time.perf_counter()
        self.prepare_encoder()
        if trainer is not None and not trainer.at_peak:
            _logger.info('training while collecting took %d of its %d warm-up steps: a '
                         'fresh head is trained', trainer.warm_steps, trainer.warmup_steps)
            trainer = None
        points = None
        if self.cfg.triangulate and trainer is None:  # a warm head needs no warm start
            points = triangulate_frames(posed, should_stop=self.cancel.is_set).points
            self._check_cancel('triangulation')
            if buffer is not None and buffer.size:
                _logger.info('%d cells already in the buffer got a triangulated target',
                             self.attach_targets(buffer, posed, points))
        start = time.perf_counter()
        prepare_s = start - prepared
        budget = self.cfg.time_budget_s
        deadline = begin + prepare_s + BUFFER_SHARE_OF_BUDGET * (budget - prepare_s) \
            if budget else None
        buffer = self.fill_buffer(posed, progress, buffer, passes_done, deadline, points)
        stats.buffer_s = time.perf_counter() - start
        stats.buffer_size, stats.buffer_images = buffer.size, buffer.n_images
        scene_mean = np.mean([f.world_from_cam[:3, 3] for f in posed], axis=0)
        start = time.perf_counter()
        time_left = budget - (start - begin) if budget else None
        # Under a budget, the schedule of the buffer that encoding would have filled.
        planned = self.planned_cells(len(posed)) if time_left is not None else 0
        split = None
        if self.cfg.regions > 1 and trainer is None:
            split = self.train_regions(buffer, posed, progress, time_left, planned)
        if split is None:
            if self.cfg.regions > 1 and trainer is not None:
                _logger.info('the head trained while keyframes arrived goes on alone: one '
                             'region, not %d', self.cfg.regions)
            run = self.train(buffer, scene_mean, progress, time_left, planned, trainer)
            split = RegionSplit([run], [buffer], None)
        stats.iterations = sum(run.iterations for run in split.runs)
        stats.loss_history = [loss for run in split.runs for loss in run.loss_history]
        stats.train_s = time.perf_counter() - start
        if trainer is not None:
            stats.warm_iterations, stats.warm_s = trainer.warm_steps, trainer.warm_s
        # Over the regions: weighted by their cells.
        weights = np.array([part.size for part in split.buffers], np.float64)
        stats.final_loss = float(np.average(
            [float(run.last.loss.detach()) for run in split.runs], weights=weights))
        stats.final_median_error_px = float(np.average(
            [run.last.median_error_px for run in split.runs], weights=weights))
        intrinsics = _distinct_intrinsics(posed)
        start = time.perf_counter()
        heads = [run.head for run in split.runs]
        cloud = self._cloud(heads, split.buffers, posed)
        stats.cloud_s = time.perf_counter() - start
        stats.cloud_points = len(cloud) if cloud is not None else 0
        trained = TrainedHead(heads[0], stats, [f.name for f in posed], intrinsics, cloud)
        if len(heads) > 1:
            trained.more_heads = heads[1:]
            trained.region_contexts = buffer.context_table().cpu()
            trained.region_labels = torch.as_tensor(split.image_regions)
        return trained

    def train_regions(self, buffer: TrainingBuffer, frames: Sequence[Frame],
                      progress: Optional[ProgressCallback] = None,
                      time_left_s: Optional[float] = None,
                      planned_size: int = 0) -> Optional[RegionSplit]:
        """One head per region of `frames` (`regions.regions_for`, at most `cfg.regions`),
        each trained on its images' cells of `buffer` with the part of the iterations, the
        time budget and the planned cells that its cells are of the buffer's; None when the
        scene needs one region (`regions.regions_for`). A region none of whose frames was
        encoded (a budget cut encoding short) is left out."""
        labels = regions_for(frames, self.cfg.regions, self.cfg.region_radius_m, self.cfg.seed)
        region_of = {f.name: int(k) for f, k in zip(frames, labels)}
        unknown = sorted(set(buffer.sources) - set(region_of))
        if unknown:  # a buffer not filled from these frames: no region to put its images in
            _logger.warning('%d buffer images come from none of the frames (e.g. %r): one '
                            'head, no regions', len(unknown), unknown[0])
            return None
        image_region = np.array([region_of[name] for name in buffer.sources], np.int64)
        present = sorted(set(image_region.tolist()))
        if len(present) == 1:
            _logger.info('one region covers the scene (radius %.2f m)', self.cfg.region_radius_m)
            return None
        image_region = np.searchsorted(present, image_region)  # renumbered 0..len(present)-1
        parts = [buffer.subset(np.flatnonzero(image_region == k).tolist())
                 for k in range(len(present))]
        shares = [part.size / buffer.size for part in parts]
        planned = [self.iterations_for(max(part.size, int(planned_size * share)), share)
                   for part, share in zip(parts, shares)]
        by_name = {f.name: f for f in frames}
        runs: List[TrainingRun] = []
        begin = time.perf_counter()
        for k, (part, share) in enumerate(zip(parts, shares)):
            centres = [by_name[name].world_from_cam[:3, 3] for name in part.sources]
            time_k = None
            if time_left_s is not None:  # what is left, shared by the cells still to train
                time_k = (time_left_s - (time.perf_counter() - begin)) * share / sum(shares[k:])
            _logger.info('region %d of %d: %d images, %d cells', k + 1, len(parts),
                         part.n_images, part.size)
            report = _overall_progress(progress, sum(run.iterations for run in runs),
                                       sum(planned[k + 1:]))
            runs.append(self.train(part, np.mean(centres, axis=0), report, time_k,
                                   int(planned_size * share), share=share))
        return RegionSplit(runs, parts, image_region)

    def _cloud(self, heads: Sequence[Head], buffers: Sequence[TrainingBuffer],
               frames: Sequence[Frame]) -> Optional[MapCloud]:
        """The map cloud (each region's head on its cells, sharing the points out), or None
        if predicting it fails: it is only for display, and a failure here must not throw
        away the minutes of training before it."""
        try:
            clouds = [predict_cloud(head, part, frames, self.cfg.depth_min,
                                    self.cfg.depth_max, self.cfg.mixed_precision,
                                    max_points=MAX_CLOUD_POINTS // len(heads),
                                    seed=self.cfg.seed)
                      for head, part in zip(heads, buffers)]
        except Exception as error:  # noqa: B902 - see the docstring
            _logger.warning('the map gets no cloud: predicting it failed: %s: %s',
                            type(error).__name__, error, exc_info=True)
            return None
        clouds = [cloud for cloud in clouds if cloud is not None]
        if not clouds:
            return None
        return MapCloud(np.concatenate([c.points for c in clouds]),
                        np.concatenate([c.colors for c in clouds]))


def _overall_progress(progress: Optional[ProgressCallback], done: int, rest: int
                      ) -> Optional[ProgressCallback]:
    """A region's training progress as the whole training's: `done` iterations of the
    regions before it, about `rest` in the regions after it."""
    if progress is None:
        return None

    def report(p: Progress) -> None:
        progress(dataclasses.replace(p, done=done + p.done, total=done + p.total + rest))
    return report


def _distinct_intrinsics(frames: Sequence[Frame], limit: int = 16) -> List[list]:
    """Up to `limit` distinct (3, 3) K of the mapping frames, for the map file."""
    seen: Dict[tuple, list] = {}
    for f in frames:
        seen.setdefault(tuple(np.round(f.K, 4).ravel()), f.K.tolist())
        if len(seen) >= limit:
            break
    return list(seen.values())


def map_frames(frames: Sequence[Frame], cfg: MappingConfig, world_frame_id: str = 'map',
               progress: Optional[ProgressCallback] = None,
               runtime: Optional[Runtime] = None) -> MappingResult:
    """Map a scene end to end: the map, its statistics and where it ran. `runtime` by
    default is made from `cfg`'s device and encoder (without calibration images: an int8
    encoder must then be cached)."""
    if runtime is None:
        runtime = make_runtime(cfg.device, cfg.encoder)
    mapper = Mapper(cfg, runtime)
    described = runtime.describe(mapper.cfg.encoder_precision)
    _logger.info('mapping %d frames on %s with encoder %s, preset %s', len(frames),
                 described, runtime.encoder_label, cfg.preset)
    trained = mapper.map(frames, progress)
    scene_map = scene_map_from(trained, mapper.cfg, runtime.encoder_sha256,
                               runtime.encoder_label, world_frame_id)
    return MappingResult(scene_map, trained.stats, described)


def scene_map_from(trained: TrainedHead, cfg: MappingConfig, encoder_sha256: str,
                   encoder_label: str, world_frame_id: str) -> SceneMap:
    """The map file contents of a trained head (offline and online mapping alike); `cfg` is
    the mapper's own (`Mapper.cfg`), whose encoder precision is resolved."""
    if cfg.encoder_precision == 'auto':
        raise ValueError(f"the map must record the encoder precision its features had, not "
                         f"'{cfg.encoder_precision}': pass Mapper.cfg")
    stats = trained.stats
    return SceneMap(
        more_regions=[RegionHead(head.weights(), head.scene_mean) for head in trained.more_heads],
        region_contexts=trained.region_contexts, region_labels=trained.region_labels,
        head_state=trained.head.weights(), scene_mean=trained.head.scene_mean,
        encoder_sha256=encoder_sha256, head_config=trained.head.config.to_dict(),
        world_frame_id=world_frame_id, mapping_config=config_to_dict(cfg),
        intrinsics=trained.intrinsics, frame_names=trained.frame_names,
        extras={'iterations': stats.iterations, 'warm_iterations': stats.warm_iterations,
                'buffer_size': stats.buffer_size,
                'final_loss': stats.final_loss, 'encoder': encoder_label},
        cloud=trained.cloud)
