"""Live mapping: keyframes from streams of images and poses, then a trained map.

ROS-free. The mapping node hands it converted messages; tests hand it numpy arrays. Images
and poses may arrive in either order; an image gets a pose only from poses that bracket its
stamp closely (or one at its exact stamp), never from a guess. Posed images become keyframes
by the policy of keyframes.py (nearly every frame; thinned evenly past max_keyframes), are
kept in memory and queued; the worker of online_worker.py encodes them into the training
buffer while collection goes on (and, with `train_while_collecting`, trains the head when
it idles). `finish` waits for that queue to drain, then runs the remaining augmentation
passes and training with the offline mapper's code (`Mapper.map`).

This module is the session's facade: its settings, its results and its public API; the
input checks and stamp matching are online_input.py's. Stamps are integer nanoseconds (see
pose_track.py).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import numpy.typing as npt

from ace_ros.core.buffer import TrainingBuffer
from ace_ros.core.config import _f, MappingConfig
from ace_ros.core.coverage import Coverage, CoverageSummary
from ace_ros.core.keyframes import KeyframePolicy
from ace_ros.core.mapfile import save_map
from ace_ros.core.mapper import (Mapper, MappingCancelled, MappingStats, Progress,
                                 ProgressCallback, scene_map_from)
from ace_ros.core.online_input import PoseMatcher, Tally
from ace_ros.core.online_worker import KeyframeEncoder, WARM_AFTER_KEYFRAMES
from ace_ros.core.pose_track import PoseSource, PoseTrack
from ace_ros.core.runtime import make_runtime, Runtime
from ace_ros.core.types import Frame

__all__ = ['COUNTERS', 'MappingResult', 'OnlineMappingConfig', 'OnlineMappingSession',
           'SessionStatus', 'WARM_AFTER_KEYFRAMES']

_logger = logging.getLogger(__name__)

#: (folder, frames) -> the folder: writes frames as a scene `ace-ros map` reads.
SceneWriter = Callable[[Path, List[Frame]], Path]

#: Rejection and outcome counters, in report order.
COUNTERS = ('images', 'poses', 'keyframes', 'skipped_small_motion', 'skipped_spacing',
            'keyframes_thinned', 'no_pose', 'keyframe_limit', 'image_out_of_order',
            'image_duplicate_stamp', 'image_invalid',
            'pose_out_of_order', 'pose_duplicate_stamp', 'pose_invalid', 'pose_wrong_frame',
            'after_finish', 'encode_failed')


@dataclass(frozen=True)
class OnlineMappingConfig:
    """Settings of a live mapping session; field names are mapping node parameters."""

    map_path: str = _f('map.ace', 'map file written (atomically) when mapping finishes')
    keyframes_dir: str = _f('', "folder for the keyframes saved (ACE layout) before training; "
                            "'' = <map_path without suffix>_keyframes; a folder that holds "
                            'files already gets a .1, .2, ... suffix')
    save_keyframes_before_training: bool = _f(
        True, 'save the keyframes before training, so a crash or Ctrl-C loses nothing')
    stamp_tolerance_s: float = _f(
        0.05, 'an image gets a pose interpolated between the poses just before and after its '
        'stamp when both are this close (s), or the pose at its exact stamp; else none')
    max_pose_wait_s: float = _f(
        1.0, 'an image whose bracketing pose has not arrived by the time images this much '
        'newer (s, by their stamps: stream time, not wall time) arrive is counted as having '
        'no pose')
    # Small: ACE trains on every frame, so these only drop near-duplicates (a camera standing
    # still, whose pose jitters by millimetres); a hand-held camera or a robot at walking pace
    # moves 3-20 cm or several degrees per frame at 5-30 Hz. max_keyframes bounds the rest.
    min_translation_m: float = _f(0.01, 'an image is skipped as a near-duplicate when the camera '
                                  'moved less than this (m) and turned less than '
                                  'min_rotation_deg since the last image that was not')
    min_rotation_deg: float = _f(1.0, 'an image is skipped as a near-duplicate when the camera '
                                 'turned less than this (deg) and moved less than '
                                 'min_translation_m since the last image that was not')
    # 500 images at 1024 cells each fill the cpu preset's 512k-cell buffer.
    max_keyframes: int = _f(500, 'keyframes kept at most (each holds its full image in memory); '
                            'one more thins them evenly (every second one is dropped and the '
                            'spacing doubles), so the whole drive stays covered')
    # Off: measured worse (room proxy, 300 s drive, cpu preset: 21 % within 5cm/5deg against
    # 66 % without; benchmarks/RESULTS.md session 18): without triangulated targets the head
    # does not converge on a growing 360-degree room.
    train_while_collecting: bool = _f(
        False, 'experimental, measured worse: train the head on the keyframes so far whenever '
        'the encoder idles during the drive; finish runs the rest of the schedule from there')
    finish_at_max_keyframes: bool = _f(False, 'stop taking keyframes at max_keyframes instead of '
                                       'thinning them (the mapping node then trains): the first '
                                       'max_keyframes of the drive, nothing after')

    def __post_init__(self) -> None:
        for name in ('stamp_tolerance_s', 'max_pose_wait_s', 'min_translation_m',
                     'min_rotation_deg'):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f'{name} must be finite and >= 0, got {value!r}')
        if self.max_keyframes < 2:
            raise ValueError(f'max_keyframes must be >= 2 (mapping needs 2 views), got '
                             f'{self.max_keyframes}')
        if not self.map_path:
            raise ValueError("map_path must name the map file to write, got ''")


@dataclass
class MappingResult:
    """What `finish` produced."""

    map_path: str
    keyframes: int
    keyframes_dir: Optional[str]
    stats: MappingStats
    encode_s: float
    counts: Dict[str, int]


@dataclass(frozen=True)
class SessionStatus:
    """A snapshot for logs and diagnostics."""

    state: str               # 'collecting', 'training', 'done' or 'failed'
    counts: Dict[str, int]
    keyframes: int           # accepted keyframes (encoded + queued)
    pending: int             # images waiting for their bracketing pose
    queued: int              # keyframes waiting for the encoder
    encoded: int             # keyframes encoded into the training buffer
    buffer_cells: int
    progress: Optional[Progress]
    keyframes_dir: Optional[str]
    error: str
    #: training while collecting: iterations so far, and the training median reprojection
    #: error (px) of the latest one (nan before the first)
    warm_iterations: int = 0
    warm_median_error_px: float = math.nan
    #: the latest training median reprojection error (px): the final training's once it
    #: reports one, else the one while collecting (nan: none yet)
    median_error_px: float = math.nan
    #: where the keyframes' cameras have been and which ways they looked (core/coverage.py);
    #: keyframes later thinned stay counted (the thinned map spans the same drive)
    coverage: Optional[CoverageSummary] = None


class OnlineMappingSession:
    """Collects posed keyframes as they arrive, then trains and saves the map.

    Thread safety: `add_*`, `poll`, `status` and `keyframes` may be called from one
    thread (the node's callbacks) while `finish` runs in another; collection stops when
    `finish` starts. Keyframes are encoded by the session's own worker thread (running while
    keyframes are queued; `close` stops it); one lock guards the keyframe list,
    the encode queue and the counters, and is never held while encoding.

    Args:
        cfg: the training settings (the same as offline `ace-ros map`).
        online: the session settings.
        world_frame_id: frame the poses are in; '' = the frame of the first pose.
        pose_source: where image poses come from; None = this session's own PoseTrack,
            fed by `add_pose`.

    Raises:
        ValueError: if the folder of map_path does not exist, or for a bad device/encoder.
    """

    def __init__(self, cfg: MappingConfig, online: OnlineMappingConfig,
                 world_frame_id: str = '', pose_source: Optional[PoseSource] = None,
                 runtime: Optional[Runtime] = None,
                 write_scene: Optional[SceneWriter] = None) -> None:
        """`runtime` by default is made from `cfg` (without calibration images);
        `write_scene` saves keyframes before training (`data.ace_layout.write_ace_scene`)."""
        self.cfg = cfg
        self.online = online
        # Checked now, not after minutes of training.
        map_dir = Path(online.map_path).resolve().parent
        if not map_dir.is_dir():
            raise ValueError(f'map_path {online.map_path}: directory {map_dir} does not exist')
        if online.save_keyframes_before_training and write_scene is None:
            raise ValueError('save_keyframes_before_training needs a write_scene function '
                             '(ace_ros.data.ace_layout.write_ace_scene)')
        self._write_scene = write_scene
        self._runtime = runtime = runtime or make_runtime(cfg.device, cfg.encoder)
        self.device = runtime.device
        _logger.info('online mapping on %s with encoder %s, preset %s',
                     runtime.describe(cfg.encoder_precision), runtime.encoder_label, cfg.preset)
        self._mapper = Mapper(cfg, runtime)
        self._track = PoseTrack(int(round(online.stamp_tolerance_s * 1e9)))
        self._tally = Tally(COUNTERS)
        self.counts: Dict[str, int] = self._tally.counts
        self._input = PoseMatcher(self._track,
                                  pose_source if pose_source is not None else self._track,
                                  world_frame_id, online.max_pose_wait_s, self._tally,
                                  self._consider_keyframe)
        self._policy = KeyframePolicy(online.min_translation_m, online.min_rotation_deg,
                                      online.max_keyframes, online.finish_at_max_keyframes,
                                      self.counts)
        self._lock = threading.RLock()
        self._state = 'collecting'
        self._progress: Optional[Progress] = None
        self._keyframes_dir: Optional[str] = None
        self._error = ''
        self._coverage = Coverage()
        self._worker = KeyframeEncoder(self._mapper, online.max_keyframes,
                                       online.train_while_collecting, self._lock,
                                       lambda: self._state, lambda: self._policy.keyframes,
                                       self._drop_unencodable)

    # -- input ---------------------------------------------------------------------------

    def add_pose(self, stamp_ns: int, world_from_cam: npt.ArrayLike, frame_id: str = '') -> str:
        """Take one (4, 4) camera pose (OpenCV camera axes) in `frame_id`; 'ok' or why not.

        Refused (counted, logged): after finish started, a pose that is not rigid (non-finite
        values, a rotation that is not orthonormal), a frame other than the session's world
        frame, a stamp not newer than the previous pose's.
        """
        with self._lock:
            if self._state != 'collecting':
                return self._tally.reject('after_finish', 'pose ignored: mapping is no '
                                          f'longer collecting (state {self._state})')
            return self._input.add_pose(stamp_ns, world_from_cam, frame_id)

    def refuse(self, reason: str, message: str, kind: Optional[str] = 'image') -> str:
        """Count and log an input refused before it reached the session.

        For messages the caller could not convert; `kind` ('image', 'pose' or None) is
        counted as received too.
        """
        with self._lock:
            if kind:
                self.counts[kind + 's'] += 1
            return self._tally.reject(reason, message)

    def add_image(self, image: npt.NDArray[np.uint8], K: npt.NDArray[np.float64],
                  stamp_ns: int) -> str:
        """Take one (H, W, 3) uint8 RGB image with its (3, 3) K.

        Returns what happened to it so far: 'keyframe', 'skipped_small_motion' (a
        near-duplicate), 'skipped_spacing' (moved enough, but keyframes were thinned and it falls
        between two), 'no_pose', 'keyframe_limit' (finish_at_max_keyframes only), 'pending' (its
        pose is not decided yet) or a rejection reason.
        """
        with self._lock:
            if self._state != 'collecting':
                return self._tally.reject('after_finish', 'image ignored: mapping is no '
                                          f'longer collecting (state {self._state})')
            return self._input.add_image(image, K, stamp_ns)

    def poll(self) -> None:
        """Re-check waiting images (for pose sources that fill up by themselves, e.g. TF)."""
        with self._lock:
            if self._state == 'collecting':
                self._input.resolve()

    # -- state ---------------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    @property
    def world_frame_id(self) -> str:
        """The frame the poses are in (the first pose's frame, unless one was given)."""
        return self._input.world_frame_id

    @property
    def full(self) -> bool:
        """Whether max_keyframes keyframes are held (the next one thins them, or, with
        finish_at_max_keyframes, is refused)."""
        return self._policy.full

    @property
    def spacing(self) -> int:
        """Keyframes are every `spacing`-th frame that moved enough (1 until thinned)."""
        return self._policy.spacing

    @property
    def keyframe_count(self) -> int:
        """Keyframes accepted so far (encoded or still waiting for the encoder)."""
        return len(self._policy.keyframes)

    @property
    def queued_count(self) -> int:
        """Keyframes accepted but not encoded yet (being encoded included)."""
        return self._worker.queued

    # The policy's keyframes and the worker's current buffer, as they were attributes of the
    # session before those moved out (white-box tests look at them).
    @property
    def _keyframes(self) -> List[Frame]:
        return self._policy.keyframes

    @property
    def _buffer(self) -> Optional[TrainingBuffer]:
        return self._worker.buffer

    def status(self) -> SessionStatus:
        with self._lock:
            trainer = self._worker.trainer
            last = trainer.last if trainer is not None else None
            buffer = self._worker.buffer
            warm_error = last.median_error_px if last is not None else math.nan
            progress = self._progress
            final_error = (progress.median_error_px if progress is not None
                           and progress.stage == 'train' else math.nan)
            return SessionStatus(self._state, dict(self.counts), len(self._keyframes),
                                 self._input.pending, self.queued_count, self._worker.encoded,
                                 buffer.size if buffer else 0,
                                 progress, self._keyframes_dir, self._error,
                                 trainer.warm_steps if trainer is not None else 0,
                                 warm_error,
                                 final_error if math.isfinite(final_error) else warm_error,
                                 self._coverage.summary())

    def coverage_cloud(self) -> Tuple[npt.NDArray[np.float64], npt.NDArray[np.float64],
                                      npt.NDArray[np.uint8]]:
        """The voxels the keyframes' cameras visited: centres (N, 3) in the world frame,
        direction shares (N,) and display colours (N, 3) (`Coverage.voxel_cloud`)."""
        with self._lock:
            return self._coverage.voxel_cloud()

    def wait_encoded(self, timeout_s: Optional[float] = None,
                     cancel: Optional[threading.Event] = None) -> bool:
        """Wait until every accepted keyframe is encoded.

        False on timeout, when `cancel` is set, or when the session was closed with
        keyframes still queued (they will not be encoded then).
        """
        return self._worker.wait_encoded(timeout_s, cancel)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the encoder thread (keyframes still queued stay in memory, unencoded).

        Waits up to `timeout_s` for a frame being encoded; the thread is a daemon, so a
        process exit never waits for it.
        """
        self._worker.close(timeout_s)

    def keyframes(self) -> List[Frame]:
        """The keyframes so far (a copy), e.g. to save them as an ACE-layout scene with
        `ace_ros.data.ace_layout.write_ace_scene` (`ace-ros map FOLDER ...`).

        Raises:
            ValueError: if there are no keyframes yet.
        """
        with self._lock:
            keyframes = list(self._keyframes)
        if not keyframes:
            raise ValueError('no keyframes collected yet; nothing to save')
        return keyframes

    # -- training ------------------------------------------------------------------------

    def finish(self, progress: Optional[ProgressCallback] = None,
               cancel: Optional[threading.Event] = None) -> MappingResult:
        """Stop collecting, finish encoding, save the keyframes, train, write map_path.

        Keyframes still queued for the encoder are encoded first (a Ctrl-C then stops it).
        A time budget (`MappingConfig.time_budget_s`) counts from this call, so it bounds
        the wait for the map; encoding the queue counts towards the buffer's share of it.

        The map at map_path is replaced only by a complete new map (atomic save); after a
        failure or cancellation it is untouched and the keyframes stay saved.

        Args:
            progress: called with encoding progress (stage 'keyframes': the queue still to
                encode; 'buffer': the augmented passes) and training progress (iteration,
                loss, rate, ETA).
            cancel: when set (from another thread), encoding or training stops at the next
                image or iteration.

        Raises:
            ValueError: fewer than 2 keyframes (collection then continues).
            RuntimeError: finish was called before.
            ace_ros.core.mapper.MappingCancelled: `cancel` was set.
        """
        # The time budget bounds the wait from here to the map, queued keyframes included.
        budget_start = time.perf_counter()
        with self._lock:
            if self._state != 'collecting':
                raise RuntimeError(f'finish: mapping has already started (state {self._state})')
            self._input.resolve(final=True)
            if len(self._keyframes) < 2:
                raise ValueError(
                    f'mapping needs at least 2 keyframes, got {len(self._keyframes)} '
                    f"({self.counts['images']} images: {self.counts['no_pose']} without a "
                    f"pose, {self.counts['skipped_small_motion']} near-duplicates of the "
                    'previous image); keep collecting')
            self._state = 'training'
        try:
            if cancel is not None:
                self._mapper.cancel = cancel
            self._worker.drain(progress)
            trainer = self._worker.stop_training()
            with self._lock:
                # Keyframes whose encoding failed were dropped; the rest are all encoded.
                keyframes = list(self._keyframes)
                if len(keyframes) < 2:
                    raise ValueError(f'mapping needs at least 2 keyframes, got '
                                     f"{len(keyframes)} ({self.counts['encode_failed']} could "
                                     'not be encoded)')
            if self.online.save_keyframes_before_training:
                folder = self._write_scene(self.next_keyframes_folder(), keyframes)
                self._keyframes_dir = str(folder)
                _logger.info('saved %d keyframes to %s (map them offline with: ace-ros map %s '
                             '-o MAP)', len(keyframes), self._keyframes_dir,
                             self._keyframes_dir)

            def report(p: Progress) -> None:
                self._progress = p
                if progress:
                    progress(p)

            trained = self._mapper.map(keyframes, report, self._worker.buffer, passes_done=1,
                                       budget_start=budget_start, trainer=trainer)
            scene_map = scene_map_from(trained, self._mapper.cfg, self._runtime.encoder_sha256,
                                       self._runtime.encoder_label, self.world_frame_id or 'map')
            save_map(self.online.map_path, scene_map)
        except BaseException as error:  # noqa: B902 - Ctrl-C too: record it, then re-raise
            self._state = 'failed'
            self._error = str(error) or type(error).__name__
            kept = (f'keyframes are saved in {self._keyframes_dir}' if self._keyframes_dir
                    else 'keyframes are kept in memory (keyframes() returns them)')
            requested = isinstance(error, (MappingCancelled, KeyboardInterrupt))
            _logger.log(logging.WARNING if requested else logging.ERROR,
                        'mapping %s (%s); %s; %s is unchanged',
                        'stopped' if requested else 'failed', self._error, kept,
                        self.online.map_path)
            self.close(timeout_s=0.0)
            raise
        self._state = 'done'
        self.close()
        self._worker.release()  # the buffer can be GBs of device memory
        _logger.info('map written to %s: %d keyframes, %d iterations in %.0f s, final loss '
                     '%.3f', self.online.map_path, len(keyframes), trained.stats.iterations,
                     trained.stats.train_s, trained.stats.final_loss)
        return MappingResult(self.online.map_path, len(keyframes), self._keyframes_dir,
                             trained.stats, self._worker.encode_s, dict(self.counts))

    # -- internals -----------------------------------------------------------------------

    def _consider_keyframe(self, frame: Frame) -> str:
        """A posed frame (lock held): the policy decides, the worker encodes keyframes."""
        outcome, kept = self._policy.consider(frame)
        if kept is not None:  # thinned: a fresh buffer, the kept keyframes re-encoded first
            self._worker.restart(kept)
        if outcome == 'keyframe':
            self._worker.enqueue(frame)
            self._coverage.add(frame.world_from_cam)
        return outcome

    def _drop_unencodable(self, frame: Frame, error: BaseException) -> None:
        """The worker could not encode keyframe `frame` (lock held): it is no keyframe."""
        self._policy.drop(frame)
        self._tally.reject('encode_failed', f'keyframe {frame.name} dropped: encoding '
                           f'failed: {type(error).__name__}: {error}')

    def next_keyframes_folder(self) -> Path:
        """keyframes_dir (default: next to map_path), or the first free '.N' variant of it."""
        base = Path(self.online.keyframes_dir or
                    str(Path(self.online.map_path).with_suffix('')) + '_keyframes')
        candidate, n = base, 0
        while candidate.exists() and any(candidate.iterdir()):
            n += 1
            candidate = base.with_name(f'{base.name}.{n}')
        return candidate
