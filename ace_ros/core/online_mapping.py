"""Live mapping: keyframes from streams of images and poses, then a trained map.

ROS-free. The mapping node hands it converted messages; tests hand it numpy arrays. Images
and poses may arrive in either order; an image gets a pose only from poses that bracket its
stamp closely (or one at its exact stamp), never from a guess. Keyframes are kept in memory
and queued; a worker thread encodes them into the training buffer (on the mapping device) while
collection goes on, so `add_image` and `add_pose` stay cheap (a ROS callback never waits for the
encoder). `finish` waits for that queue to drain, then runs the remaining augmentation passes
and training with the offline mapper's code (`Mapper.map`).

Training while collecting (`train_while_collecting`, experimental and off by default: it lost
to training after the drive, see the field). Whenever the worker has no keyframe to encode it
trains the head on the buffer so far (`HeadTrainer.warm_step`: the learning rate rises to the
schedule's peak and stays there); `finish` then runs the schedule's annealing from the peak
for what the time budget leaves (`Mapper.train`). Encoding always goes first: training takes
only the time the encoder would idle.

Keyframe policy. ACE trains on every frame, so nearly every posed image is a keyframe: only
near-duplicates (less than min_translation_m and min_rotation_deg of motion since the previous
frame that moved enough, e.g. a robot standing still) are skipped. `max_keyframes` bounds
memory: when one more keyframe would exceed it, every second keyframe is dropped and from then
on only every second frame that moves enough is kept (the spacing doubles each time), so the
keyframes cover the whole drive at one uniform density, between max_keyframes / 2 and
max_keyframes of them. Thinning discards the training buffer and re-queues the kept keyframes
for encoding: the buffer then holds exactly the kept keyframes' cells, as if only they had
arrived (at most one extra encoding per keyframe accepted, over the whole drive).
`finish_at_max_keyframes` restores the old policy: keyframes stop at max_keyframes (the
mapping node then trains).

Stamps are integer nanoseconds (see pose_track.py).
"""

from __future__ import annotations

import collections
import logging
import math
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Deque, Dict, List, Optional, Tuple

import numpy as np
import numpy.typing as npt

from ace_ros.core import device as device_lib
from ace_ros.core import geometry
from ace_ros.core.config import MappingConfig
from ace_ros.core.mapfile import save_map
from ace_ros.core.mapper import (Mapper, MappingCancelled, MappingStats, Progress,
                                 ProgressCallback, scene_map_from)
from ace_ros.core.training import HeadTrainer
from ace_ros.core.pose_track import (PoseLookup, PoseSource, PoseTrack, check_rigid_pose,
                                     ms_text, stamp_name)
from ace_ros.core.types import Frame
from ace_ros.core.weights import build_encoder

_logger = logging.getLogger(__name__)

#: Rejection and outcome counters, in report order.
COUNTERS = ('images', 'poses', 'keyframes', 'skipped_small_motion', 'skipped_spacing',
            'keyframes_thinned', 'no_pose', 'keyframe_limit', 'image_out_of_order',
            'image_duplicate_stamp', 'image_invalid',
            'pose_out_of_order', 'pose_duplicate_stamp', 'pose_invalid', 'pose_wrong_frame',
            'after_finish', 'encode_failed')
_WARN_EVERY_S = 5.0
#: Training while collecting starts once this many keyframes are in the buffer.
WARM_AFTER_KEYFRAMES = 10


def _f(default, help: str):  # noqa: A002 - 'help' reads best at call sites
    return field(default=default, metadata={'help': help})


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


class OnlineMappingSession:
    """Collects posed keyframes as they arrive, then trains and saves the map.

    Thread safety: `add_*`, `poll`, `status` and `save_keyframes` may be called from one
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
                 world_frame_id: str = '', pose_source: Optional[PoseSource] = None) -> None:
        self.cfg = cfg
        self.online = online
        # Checked now, not after minutes of training.
        map_dir = Path(online.map_path).resolve().parent
        if not map_dir.is_dir():
            raise ValueError(f'map_path {online.map_path}: directory {map_dir} does not exist')
        self.device = device_lib.resolve_device(cfg.device)
        encoder, self._encoder_sha256, self._encoder_label = build_encoder(
            cfg.encoder, self.device)
        _logger.info('online mapping on %s with encoder %s, preset %s',
                     device_lib.describe(self.device, cfg.encoder_precision),
                     self._encoder_label, cfg.preset)
        self._mapper = Mapper(cfg, encoder, self.device, self._encoder_sha256)
        self._buffer = self._mapper.new_buffer(online.max_keyframes)
        self._track = PoseTrack(int(round(online.stamp_tolerance_s * 1e9)))
        self._pose_source: PoseSource = pose_source if pose_source is not None else self._track
        self.world_frame_id = world_frame_id
        self._pending: Deque[Tuple[int, Frame]] = collections.deque()
        self._keyframes: List[Frame] = []
        # Keyframe policy (see the module docstring): frames that moved enough ("candidates")
        # are numbered; candidate c is a keyframe while c % _spacing == 0.
        self._candidates = 0
        self._last_candidate_pose: Optional[npt.NDArray[np.float64]] = None
        self._spacing = 1
        self._candidate_index: Dict[str, int] = {}  # keyframe name -> its candidate number
        self._last_image_ns: Optional[int] = None
        self._last_pose_ns: Optional[int] = None
        self._encode_s = 0.0
        self.counts: Dict[str, int] = {name: 0 for name in COUNTERS}
        self._lock = threading.RLock()
        self._state = 'collecting'
        self._progress: Optional[Progress] = None
        self._keyframes_dir: Optional[str] = None
        self._error = ''
        self._last_warned: Dict[str, Tuple[float, int]] = {}
        # Keyframes accepted but not yet encoded (they are in _keyframes too: no extra memory).
        self._encode_queue: Deque[Frame] = collections.deque()
        self._encoded = 0
        self._encoding = False      # the worker is encoding a frame taken off the queue
        # Thinning bumps the generation: frames encoded into an older buffer do not count, and
        # the worker replaces the buffer (dropping the old one first) before its next frame.
        self._generation = 0
        self._buffer_stale = False
        self._closed = False
        self._changed = threading.Condition(self._lock)  # queue or encoder state changed
        self._encoder_thread: Optional[threading.Thread] = None
        # Training while collecting: the worker's trainer, whether a step is running, and
        # whether it stopped for good (a step failed).
        self._trainer: Optional[HeadTrainer] = None
        self._warm_stepping = False
        self._warm_failed = False

    # -- input ---------------------------------------------------------------------------

    def add_pose(self, stamp_ns: int, world_from_cam: npt.ArrayLike, frame_id: str = '') -> str:
        """Take one (4, 4) camera pose (OpenCV camera axes) in `frame_id`; 'ok' or why not.

        Refused (counted, logged): after finish started, a pose that is not rigid (non-finite
        values, a rotation that is not orthonormal), a frame other than the session's world
        frame, a stamp not newer than the previous pose's.
        """
        with self._lock:
            if self._state != 'collecting':
                return self._reject('after_finish', 'pose ignored: mapping is no longer '
                                    f'collecting (state {self._state})')
            self.counts['poses'] += 1
            try:
                world_from_cam = check_rigid_pose(world_from_cam)
            except ValueError as error:
                return self._reject('pose_invalid', f'pose at {stamp_name(stamp_ns)} refused: '
                                    f'{error}')
            if frame_id and self.world_frame_id and frame_id != self.world_frame_id:
                return self._reject('pose_wrong_frame', f'pose at {stamp_name(stamp_ns)} '
                                    f"refused: it is in frame '{frame_id}', mapping uses "
                                    f"'{self.world_frame_id}' (the configured fixed frame, or "
                                    'the frame of the first pose)')
            refused = self._check_order('pose', stamp_ns, self._last_pose_ns)
            if refused:
                return refused
            if frame_id and not self.world_frame_id:
                self.world_frame_id = frame_id
            self._last_pose_ns = stamp_ns
            self._track.add(stamp_ns, world_from_cam)
            self._resolve_pending()
            return 'ok'

    def refuse(self, reason: str, message: str, kind: Optional[str] = 'image') -> str:
        """Count and log an input refused before it reached the session.

        For messages the caller could not convert; `kind` ('image', 'pose' or None) is
        counted as received too.
        """
        with self._lock:
            if kind:
                self.counts[kind + 's'] += 1
            return self._reject(reason, message)

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
                return self._reject('after_finish', 'image ignored: mapping is no longer '
                                    f'collecting (state {self._state})')
            self.counts['images'] += 1
            if stamp_ns <= 0:
                return self._reject('image_invalid', f'image refused: its stamp is {stamp_ns} '
                                    '(unset); images need their capture time')
            refused = self._check_order('image', stamp_ns, self._last_image_ns)
            if refused:
                return refused
            try:
                # A copy: a keyframe must not alias a message buffer the caller reuses.
                frame = Frame(stamp_name(stamp_ns), np.array(image), _checked_K(K),
                              stamp=stamp_ns / 1e9)
            except ValueError as error:
                return self._reject('image_invalid', f'image at {stamp_name(stamp_ns)} '
                                    f'refused: {error}')
            self._last_image_ns = stamp_ns
            self._pending.append((stamp_ns, frame))
            return self._resolve_pending(stamp_ns) or 'pending'

    def poll(self) -> None:
        """Re-check waiting images (for pose sources that fill up by themselves, e.g. TF)."""
        with self._lock:
            if self._state == 'collecting':
                self._resolve_pending()

    # -- state ---------------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    @property
    def full(self) -> bool:
        """Whether max_keyframes keyframes are held (the next one thins them, or, with
        finish_at_max_keyframes, is refused)."""
        return len(self._keyframes) >= self.online.max_keyframes

    @property
    def spacing(self) -> int:
        """Keyframes are every `spacing`-th frame that moved enough (1 until thinned)."""
        return self._spacing

    @property
    def keyframe_count(self) -> int:
        """Keyframes accepted so far (encoded or still waiting for the encoder)."""
        return len(self._keyframes)

    @property
    def queued_count(self) -> int:
        """Keyframes accepted but not encoded yet (being encoded included)."""
        with self._lock:
            return len(self._encode_queue) + int(self._encoding)

    def status(self) -> SessionStatus:
        with self._lock:
            trainer = self._trainer
            last = trainer.last if trainer is not None else None
            return SessionStatus(self._state, dict(self.counts), len(self._keyframes),
                                 len(self._pending), self.queued_count, self._encoded,
                                 self._buffer.size if self._buffer else 0,
                                 self._progress, self._keyframes_dir, self._error,
                                 trainer.warm_steps if trainer is not None else 0,
                                 last.median_error_px if last is not None else math.nan)

    def wait_encoded(self, timeout_s: Optional[float] = None,
                     cancel: Optional[threading.Event] = None) -> bool:
        """Wait until every accepted keyframe is encoded.

        False on timeout, when `cancel` is set, or when the session was closed with
        keyframes still queued (they will not be encoded then).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            while self._encode_queue or self._encoding:
                if (cancel is not None and cancel.is_set()) or (
                        self._closed and not self._encoding):
                    return False
                wait = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
                if wait <= 0:
                    return False
                self._changed.wait(wait)
            return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the encoder thread (keyframes still queued stay in memory, unencoded).

        Waits up to `timeout_s` for a frame being encoded; the thread is a daemon, so a
        process exit never waits for it.
        """
        with self._lock:
            self._closed = True
            self._changed.notify_all()
            thread = self._encoder_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    def save_keyframes(self, folder: str | Path) -> Path:
        """Write the keyframes so far as an ACE-layout scene (`ace-ros map FOLDER ...`).

        Raises:
            ValueError: if there are no keyframes yet.
            FileExistsError: if `folder`/rgb already holds files.
        """
        from ace_ros.data.ace_layout import write_ace_scene
        with self._lock:
            keyframes = list(self._keyframes)
        if not keyframes:
            raise ValueError('no keyframes collected yet; nothing to save')
        return write_ace_scene(folder, keyframes)

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
            self._resolve_pending(final=True)
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
            self._drain(progress)
            trainer = self._stop_training()
            with self._lock:
                # Keyframes whose encoding failed were dropped; the rest are all encoded.
                keyframes = list(self._keyframes)
                if len(keyframes) < 2:
                    raise ValueError(f'mapping needs at least 2 keyframes, got '
                                     f"{len(keyframes)} ({self.counts['encode_failed']} could "
                                     'not be encoded)')
            if self.online.save_keyframes_before_training:
                self._keyframes_dir = str(self.save_keyframes(self.next_keyframes_folder()))
                _logger.info('saved %d keyframes to %s (map them offline with: ace-ros map %s '
                             '-o MAP)', len(keyframes), self._keyframes_dir,
                             self._keyframes_dir)

            def report(p: Progress) -> None:
                self._progress = p
                if progress:
                    progress(p)

            trained = self._mapper.map(keyframes, report, self._buffer, passes_done=1,
                                       budget_start=budget_start, trainer=trainer)
            scene_map = scene_map_from(trained, self._mapper.cfg, self._encoder_sha256,
                                       self._encoder_label, self.world_frame_id or 'map')
            save_map(self.online.map_path, scene_map)
        except BaseException as error:  # noqa: B902 - Ctrl-C too: record it, then re-raise
            self._state = 'failed'
            self._error = str(error) or type(error).__name__
            kept = (f'keyframes are saved in {self._keyframes_dir}' if self._keyframes_dir
                    else 'keyframes are kept in memory (save them with save_keyframes)')
            requested = isinstance(error, (MappingCancelled, KeyboardInterrupt))
            _logger.log(logging.WARNING if requested else logging.ERROR,
                        'mapping %s (%s); %s; %s is unchanged',
                        'stopped' if requested else 'failed', self._error, kept,
                        self.online.map_path)
            self.close(timeout_s=0.0)
            raise
        self._state = 'done'
        self.close()
        self._buffer = None  # the buffer can be GBs of device memory
        self._trainer = None
        _logger.info('map written to %s: %d keyframes, %d iterations in %.0f s, final loss '
                     '%.3f', self.online.map_path, len(keyframes), trained.stats.iterations,
                     trained.stats.train_s, trained.stats.final_loss)
        return MappingResult(self.online.map_path, len(keyframes), self._keyframes_dir,
                             trained.stats, self._encode_s, dict(self.counts))

    # -- internals -----------------------------------------------------------------------

    def _check_order(self, kind: str, stamp_ns: int, last_ns: Optional[int]) -> str:
        if last_ns is None or stamp_ns > last_ns:
            return ''
        if stamp_ns == last_ns:
            return self._reject(f'{kind}_duplicate_stamp', f'{kind} refused: stamp '
                                f'{stamp_name(stamp_ns)} repeats the previous {kind} stamp')
        return self._reject(f'{kind}_out_of_order', f'{kind} refused: stamp '
                            f'{stamp_name(stamp_ns)} is {ms_text(last_ns - stamp_ns)} older '
                            f'than the previous {kind} ({stamp_name(last_ns)}); {kind}s must '
                            'arrive in stamp order (a looping bag or a clock jump?)')

    def _resolve_pending(self, newest_ns: Optional[int] = None, final: bool = False) -> str:
        """Decide waiting images in order; returns the outcome of the image at `newest_ns`."""
        outcome = ''
        max_wait_ns = int(round(self.online.max_pose_wait_s * 1e9))
        while self._pending:
            stamp_ns, frame = self._pending[0]
            found = self._pose_source.lookup(stamp_ns)
            if found.status == 'wait':
                if final:
                    found = PoseLookup('none', reason='no pose at or after its stamp arrived '
                                       'before mapping finished')
                elif self._last_image_ns - stamp_ns > max_wait_ns:
                    found = PoseLookup('none', reason='no pose at or after its stamp arrived '
                                       f'within max_pose_wait_s ({self.online.max_pose_wait_s}'
                                       ' s of newer images)')
                else:
                    break
            self._pending.popleft()
            if found.status == 'ok':
                frame.world_from_cam = found.world_from_cam
                result = self._consider_keyframe(frame)
            else:
                result = self._reject('no_pose', f'image {frame.name} has no pose: '
                                      f'{found.reason}')
            if stamp_ns == newest_ns:
                outcome = result
        self._track.forget_before(self._pending[0][0] if self._pending
                                  else self._last_image_ns or 0)
        return outcome

    def _consider_keyframe(self, frame: Frame) -> str:
        if self.online.finish_at_max_keyframes and self.full:
            self.counts['keyframe_limit'] += 1
            return 'keyframe_limit'
        if self._last_candidate_pose is not None:
            moved_m, turned_deg = geometry.pose_error(frame.world_from_cam,
                                                      self._last_candidate_pose)
            if (moved_m < self.online.min_translation_m
                    and turned_deg < self.online.min_rotation_deg):
                self.counts['skipped_small_motion'] += 1
                return 'skipped_small_motion'
        index = self._candidates
        self._candidates += 1
        self._last_candidate_pose = frame.world_from_cam
        if index % self._spacing == 0 and self.full:
            self._thin()
        if index % self._spacing:
            self.counts['skipped_spacing'] += 1
            return 'skipped_spacing'
        self._keyframes.append(frame)
        self._candidate_index[frame.name] = index
        self.counts['keyframes'] += 1
        self._encode_queue.append(frame)
        self._start_encoder()
        self._changed.notify_all()
        if self.online.finish_at_max_keyframes and self.full:
            _logger.info('keyframe limit reached (%d); collection is complete',
                         self.online.max_keyframes)
        return 'keyframe'

    def _thin(self) -> None:
        """Drop every second keyframe (on the candidate lattice) and double the spacing.

        The buffer holds cells of the dropped keyframes: rather than cut them out of it, the
        worker starts a fresh buffer and re-encodes the kept keyframes, so the buffer always
        holds the kept keyframes' first pass and nothing else (what `finish` relies on:
        `Mapper.map(..., passes_done=1)`). Every keyframe encoded once more at most:
        thinning re-encodes max_keyframes / 2, and max_keyframes / 2 new ones come before
        the next thinning.
        """
        before = len(self._keyframes)
        self._spacing *= 2
        kept = [f for f in self._keyframes
                if self._candidate_index[f.name] % self._spacing == 0]
        self._keyframes = kept
        self._candidate_index = {f.name: self._candidate_index[f.name] for f in kept}
        dropped = before - len(kept)
        self.counts['keyframes'] -= dropped
        self.counts['keyframes_thinned'] += dropped
        self._generation += 1
        self._buffer_stale = True
        self._encode_queue = collections.deque(kept)
        self._encoded = 0
        self._start_encoder()
        self._changed.notify_all()
        _logger.info('max_keyframes (%d) reached: thinned the keyframes evenly, %d of %d kept; '
                     'from now on every %d%s frame that moves enough is a keyframe, so the whole '
                     'drive stays covered at one density; re-encoding the %d kept into a fresh '
                     'buffer', self.online.max_keyframes, len(kept), before, self._spacing,
                     _ordinal_suffix(self._spacing), len(kept))

    def _start_encoder(self) -> None:
        if self._encoder_thread is None and not self._closed:
            self._encoder_thread = threading.Thread(target=self._encode_loop, daemon=True,
                                                    name='ace_ros_keyframe_encoder')
            self._encoder_thread.start()

    def _encode_loop(self) -> None:
        """Worker: encode queued keyframes into the buffer (the first augmentation pass);
        between them, train while collecting."""
        while True:
            with self._lock:
                if (not self._encode_queue or self._closed
                        or self._state in ('done', 'failed')):
                    if self._may_train():
                        self._warm_stepping = True
                    else:
                        # Idle: the thread ends, and the next keyframe starts another one.
                        self._encoder_thread = None
                        self._changed.notify_all()
                        return
                else:
                    frame = self._encode_queue.popleft()
                    self._encoding = True
            if self._warm_stepping:
                self._warm_step()
                continue
            with self._lock:
                generation = self._generation
                fresh = self._buffer_stale
                if fresh:  # thinned: the old buffer goes before a new one is allocated
                    self._buffer_stale = False
                    self._buffer = None
                buffer = self._buffer
            error: Optional[BaseException] = None
            start = time.perf_counter()
            try:
                # No lock held: callbacks keep adding images and poses meanwhile. Only this
                # thread touches the mapper and the buffer until `finish` has drained the
                # queue.
                if fresh:
                    buffer = self._mapper.new_buffer(self.online.max_keyframes)
                    with self._lock:
                        self._buffer = buffer
                self._mapper.add_to_buffer(buffer, frame)
            except Exception as caught:  # noqa: BLE001 - e.g. out of memory: drop the frame
                error = caught
            buffer = None  # a thinning may replace it: hold no reference while idle
            with self._lock:
                self._encode_s += time.perf_counter() - start
                self._encoding = False
                if generation != self._generation:
                    pass  # thinned meanwhile: that buffer is gone, the kept frames re-queued
                elif error is None:
                    self._encoded += 1
                else:
                    if fresh and self._buffer is None:
                        self._buffer_stale = True  # allocating failed: the next frame retries
                    self._keyframes = [f for f in self._keyframes if f is not frame]
                    self._candidate_index.pop(frame.name, None)
                    self.counts['keyframes'] -= 1
                    self._reject('encode_failed', f'keyframe {frame.name} dropped: encoding '
                                 f'failed: {type(error).__name__}: {error}')
                self._changed.notify_all()

    def _may_train(self) -> bool:
        """Whether the idle worker trains now (lock held)."""
        return (self.online.train_while_collecting and not self._warm_failed
                and self._state == 'collecting' and not self._closed
                and self._buffer is not None and not self._buffer_stale
                # Thinning keeps max_keyframes / 2 at least.
                and self._buffer.n_images >= min(WARM_AFTER_KEYFRAMES,
                                                 max(2, self.online.max_keyframes // 2)))

    def _warm_step(self) -> None:
        """One training step while collecting (worker thread, no lock held: only this thread
        touches the buffer and the trainer until `finish` has stopped it)."""
        try:
            if self._trainer is None:
                with self._lock:
                    # The head's output offset; the keyframes to come move the mean a little,
                    # which the head's last layer absorbs.
                    scene_mean = np.mean([f.world_from_cam[:3, 3] for f in self._keyframes],
                                         axis=0)
                self._trainer = self._mapper.new_trainer(self._buffer.features.shape[1],
                                                         scene_mean)
                _logger.info('training while collecting, from %d keyframes on',
                             self._buffer.n_images)
            self._trainer.warm_step(self._buffer,
                                    self._mapper.warmup_steps(self.online.max_keyframes))
        except Exception as error:  # noqa: BLE001 - e.g. out of memory: finish trains afresh
            _logger.warning('training while collecting stopped (%s: %s); mapping will train '
                            'a fresh head when it finishes', type(error).__name__, error)
            with self._lock:
                self._warm_failed = True
                self._trainer = None
        finally:
            with self._lock:
                self._warm_stepping = False
                self._changed.notify_all()

    def _stop_training(self) -> Optional[HeadTrainer]:
        """Wait (in `finish`, state no longer 'collecting') for a training step still running;
        returns the trainer to go on with, or None."""
        with self._lock:
            while self._warm_stepping:
                self._changed.wait(0.1)
            return self._trainer

    def _drain(self, progress: Optional[ProgressCallback]) -> None:
        """Wait (in `finish`) for the encoder to finish the queued keyframes."""
        with self._lock:
            first = self._encoded
            total = first + self.queued_count
        if total > first:
            _logger.info('waiting for %d queued keyframe(s) to be encoded', total - first)
        start = time.perf_counter()
        while not self.wait_encoded(timeout_s=0.5, cancel=self._mapper.cancel):
            if self._mapper.cancel.is_set():
                raise MappingCancelled('mapping cancelled while encoding queued keyframes')
            if self._closed and not self._encoding:
                raise RuntimeError('the session was closed with keyframes still queued')
            if progress:
                done = self._encoded
                elapsed = time.perf_counter() - start
                rate = (done - first) / elapsed if elapsed > 0 else math.nan
                progress(Progress('keyframes', done, total, rate=rate,
                                  eta_s=(total - done) / rate if rate > 0 else math.nan))

    def _reject(self, reason: str, message: str) -> str:
        """Count `reason` and log `message`, throttled per kind of problem.

        Each kind is logged the first time, then at most every 5 s; messages that differ
        only in numbers are the same kind.
        """
        self.counts[reason] = self.counts.get(reason, 0) + 1
        key = re.sub(r'\d+', '#', message)
        now = time.monotonic()
        last, suppressed = self._last_warned.get(key, (-math.inf, 0))
        if now - last >= _WARN_EVERY_S:
            more = f' ({suppressed} more like this since the last report)' if suppressed else ''
            _logger.warning('%s%s', message, more)
            self._last_warned[key] = (now, 0)
        else:
            self._last_warned[key] = (last, suppressed + 1)
        return reason

    def next_keyframes_folder(self) -> Path:
        """keyframes_dir (default: next to map_path), or the first free '.N' variant of it."""
        base = Path(self.online.keyframes_dir or
                    str(Path(self.online.map_path).with_suffix('')) + '_keyframes')
        candidate, n = base, 0
        while candidate.exists() and any(candidate.iterdir()):
            n += 1
            candidate = base.with_name(f'{base.name}.{n}')
        return candidate


def _ordinal_suffix(n: int) -> str:
    return 'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')


def _checked_K(K: npt.ArrayLike) -> npt.NDArray[np.float64]:
    K = np.asarray(K, dtype=np.float64)
    geometry.check_shape(K, (3, 3), 'K')
    if not (np.all(np.isfinite(K)) and K[0, 0] > 0 and K[1, 1] > 0
            and np.allclose(K[2], [0.0, 0.0, 1.0])):
        raise ValueError(f'K must be finite with fx, fy > 0 and last row [0, 0, 1], got '
                         f'{K.tolist()} (is camera_info filled in?)')
    return K
