"""The online mapping session's worker thread: encodes keyframes as they are accepted.

Keyframes are queued by the session; this thread encodes them into the training buffer (the
first augmentation pass, on the mapping device) while collection goes on, so the session's
`add_image` and `add_pose` stay cheap (a ROS callback never waits for the encoder). The
thread runs while there is work and ends when idle; the next keyframe starts another one.

Training while collecting (`train_while_collecting`, experimental and off by default: it lost
to training after the drive). Whenever the worker has no keyframe to encode it trains the
head on the buffer so far (`HeadTrainer.warm_step`: the learning rate rises to the
schedule's peak and stays there); the session's `finish` then runs the schedule's annealing
from the peak for what the time budget leaves (`Mapper.train`). Encoding always goes first:
training takes only the time the encoder would idle.

Thinning (see keyframes.py) discards the buffer and re-queues the kept keyframes: the
buffer then holds exactly the kept keyframes' cells, as if only they had arrived (at most
one extra encoding per keyframe accepted, over the whole drive).

The worker shares the session's lock (one lock guards the keyframes, the queue and the
counters; it is never held while encoding or training).
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from typing import Callable, Deque, List, Optional, Sequence

import numpy as np

from ace_ros.core.buffer import TrainingBuffer
from ace_ros.core.mapper import Mapper, MappingCancelled, Progress, ProgressCallback
from ace_ros.core.training import HeadTrainer
from ace_ros.core.types import Frame

# The session's logger: the node and the tests follow the session's messages by its name.
_logger = logging.getLogger('ace_ros.core.online_mapping')

#: Training while collecting starts once this many keyframes are in the buffer.
WARM_AFTER_KEYFRAMES = 10


class KeyframeEncoder:
    """The encode queue, the training buffer it fills, and the thread that does it.

    Args:
        mapper: encodes frames into buffers and makes the trainer (only this worker touches
            it and the buffer until `drain` and `stop_training` have returned).
        max_keyframes: sizes the buffer, and the warm-up of training while collecting.
        train_while_collecting: train the head whenever there is nothing to encode.
        lock: the session's lock.
        state: the session's state ('collecting', 'training', 'done' or 'failed').
        keyframes: the session's keyframes so far (lock held).
        on_encode_failed: drops a keyframe whose encoding raised (called with the lock held).
    """

    def __init__(self, mapper: Mapper, max_keyframes: int, train_while_collecting: bool,
                 lock: threading.RLock, state: Callable[[], str],
                 keyframes: Callable[[], Sequence[Frame]],
                 on_encode_failed: Callable[[Frame, BaseException], None]) -> None:
        self._mapper = mapper
        self._max_keyframes = max_keyframes
        self._train_while_collecting = train_while_collecting
        self._lock = lock
        self._state = state
        self._keyframes = keyframes
        self._on_encode_failed = on_encode_failed
        self.buffer: Optional[TrainingBuffer] = mapper.new_buffer(max_keyframes)
        self.encode_s = 0.0
        #: keyframes encoded into the current buffer
        self.encoded = 0
        # Keyframes accepted but not yet encoded (the session holds them too: no extra memory).
        self._queue: Deque[Frame] = collections.deque()
        self._encoding = False      # encoding a frame taken off the queue
        # Thinning bumps the generation: frames encoded into an older buffer do not count, and
        # the worker replaces the buffer (dropping the old one first) before its next frame.
        self._generation = 0
        self._buffer_stale = False
        self._closed = False
        self._changed = threading.Condition(lock)  # queue or encoder state changed
        self._thread: Optional[threading.Thread] = None
        # Training while collecting: the trainer, whether a step is running, and whether it
        # stopped for good (a step failed).
        self.trainer: Optional[HeadTrainer] = None
        self._warm_stepping = False
        self._warm_failed = False

    @property
    def queued(self) -> int:
        """Keyframes accepted but not encoded yet (being encoded included)."""
        with self._lock:
            return len(self._queue) + int(self._encoding)

    def enqueue(self, frame: Frame) -> None:
        """Queue a new keyframe (lock held)."""
        self._queue.append(frame)
        self._start()
        self._changed.notify_all()

    def restart(self, kept: List[Frame]) -> None:
        """After a thinning (lock held): a fresh buffer, and `kept` queued to fill it.

        The buffer holds cells of the dropped keyframes: rather than cut them out of it, the
        worker starts a fresh buffer and re-encodes the kept keyframes, so the buffer always
        holds the kept keyframes' first pass and nothing else (what `finish` relies on:
        `Mapper.map(..., passes_done=1)`). Every keyframe encoded once more at most:
        thinning re-encodes max_keyframes / 2, and max_keyframes / 2 new ones come before
        the next thinning.
        """
        self._generation += 1
        self._buffer_stale = True
        self._queue = collections.deque(kept)
        self.encoded = 0
        self._start()
        self._changed.notify_all()

    def wait_encoded(self, timeout_s: Optional[float] = None,
                     cancel: Optional[threading.Event] = None) -> bool:
        """Wait until every queued keyframe is encoded.

        False on timeout, when `cancel` is set, or when the worker was closed with
        keyframes still queued (they will not be encoded then).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            while self._queue or self._encoding:
                if (cancel is not None and cancel.is_set()) or (
                        self._closed and not self._encoding):
                    return False
                wait = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
                if wait <= 0:
                    return False
                self._changed.wait(wait)
            return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread (keyframes still queued stay unencoded).

        Waits up to `timeout_s` for a frame being encoded; the thread is a daemon, so a
        process exit never waits for it.
        """
        with self._lock:
            self._closed = True
            self._changed.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    def release(self) -> None:
        """Drop the buffer (it can be GBs of device memory) and the trainer."""
        self.buffer = None
        self.trainer = None

    def drain(self, progress: Optional[ProgressCallback]) -> None:
        """Wait (in `finish`) for the queued keyframes to be encoded."""
        with self._lock:
            first = self.encoded
            total = first + self.queued
        if total > first:
            _logger.info('waiting for %d queued keyframe(s) to be encoded', total - first)
        start = time.perf_counter()
        while not self.wait_encoded(timeout_s=0.5, cancel=self._mapper.cancel):
            if self._mapper.cancel.is_set():
                raise MappingCancelled('mapping cancelled while encoding queued keyframes')
            if self._closed and not self._encoding:
                raise RuntimeError('the session was closed with keyframes still queued')
            if progress:
                done = self.encoded
                elapsed = time.perf_counter() - start
                rate = (done - first) / elapsed if elapsed > 0 else math.nan
                progress(Progress('keyframes', done, total, rate=rate,
                                  eta_s=(total - done) / rate if rate > 0 else math.nan))

    def stop_training(self) -> Optional[HeadTrainer]:
        """Wait (in `finish`, state no longer 'collecting') for a training step still running;
        returns the trainer to go on with, or None."""
        with self._lock:
            while self._warm_stepping:
                self._changed.wait(0.1)
            return self.trainer

    # -- the thread ------------------------------------------------------------------------

    def _start(self) -> None:
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._loop, daemon=True,
                                            name='ace_ros_keyframe_encoder')
            self._thread.start()

    def _loop(self) -> None:
        """Encode queued keyframes into the buffer; between them, train while collecting."""
        while True:
            with self._lock:
                if (not self._queue or self._closed
                        or self._state() in ('done', 'failed')):
                    if self._may_train():
                        self._warm_stepping = True
                    else:
                        # Idle: the thread ends, and the next keyframe starts another one.
                        self._thread = None
                        self._changed.notify_all()
                        return
                else:
                    frame = self._queue.popleft()
                    self._encoding = True
            if self._warm_stepping:
                self._warm_step()
                continue
            self._encode(frame)

    def _encode(self, frame: Frame) -> None:
        with self._lock:
            generation = self._generation
            fresh = self._buffer_stale
            if fresh:  # thinned: the old buffer goes before a new one is allocated
                self._buffer_stale = False
                self.buffer = None
            buffer = self.buffer
        error: Optional[BaseException] = None
        start = time.perf_counter()
        try:
            # No lock held: callbacks keep adding images and poses meanwhile. Only this
            # thread touches the mapper and the buffer until `finish` has drained the queue.
            if fresh:
                buffer = self._mapper.new_buffer(self._max_keyframes)
                with self._lock:
                    self.buffer = buffer
            self._mapper.add_to_buffer(buffer, frame)
        except Exception as caught:  # noqa: BLE001 - e.g. out of memory: drop the frame
            error = caught
        buffer = None  # a thinning may replace it: hold no reference while idle
        with self._lock:
            self.encode_s += time.perf_counter() - start
            self._encoding = False
            if generation != self._generation:
                pass  # thinned meanwhile: that buffer is gone, the kept frames re-queued
            elif error is None:
                self.encoded += 1
            else:
                if fresh and self.buffer is None:
                    self._buffer_stale = True  # allocating failed: the next frame retries
                self._on_encode_failed(frame, error)
            self._changed.notify_all()

    def _may_train(self) -> bool:
        """Whether the idle worker trains now (lock held)."""
        return (self._train_while_collecting and not self._warm_failed
                and self._state() == 'collecting' and not self._closed
                and self.buffer is not None and not self._buffer_stale
                # Thinning keeps max_keyframes / 2 at least.
                and self.buffer.n_images >= min(WARM_AFTER_KEYFRAMES,
                                                max(2, self._max_keyframes // 2)))

    def _warm_step(self) -> None:
        """One training step while collecting (no lock held: only this thread touches the
        buffer and the trainer until `finish` has stopped it)."""
        try:
            if self.trainer is None:
                with self._lock:
                    # The head's output offset; the keyframes to come move the mean a little,
                    # which the head's last layer absorbs.
                    scene_mean = np.mean([f.world_from_cam[:3, 3] for f in self._keyframes()],
                                         axis=0)
                self.trainer = self._mapper.new_trainer(self.buffer.features.shape[1],
                                                        scene_mean)
                _logger.info('training while collecting, from %d keyframes on',
                             self.buffer.n_images)
            self.trainer.warm_step(self.buffer,
                                   self._mapper.warmup_steps(self._max_keyframes))
        except Exception as error:  # noqa: BLE001 - e.g. out of memory: finish trains afresh
            _logger.warning('training while collecting stopped (%s: %s); mapping will train '
                            'a fresh head when it finishes', type(error).__name__, error)
            with self._lock:
                self._warm_failed = True
                self.trainer = None
        finally:
            with self._lock:
                self._warm_stepping = False
                self._changed.notify_all()
