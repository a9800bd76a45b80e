"""mapping_training: mapping_node's training, in a worker thread, from keyframes to the map.

`Training.start()` begins it once (on ~/finish, the idle timeout or max_keyframes) so that
callbacks, services and diagnostics stay responsive while it runs; progress is logged every
few seconds; `cancel()` stops it (Ctrl-C). The session (`ace_ros.core.online_mapping`)
trains, writes the map and logs the outcome; `exit_code` says how it ended.
"""

from __future__ import annotations

import threading
import time
from typing import Optional, Tuple

from ace_ros.core.mapper import MappingCancelled, Progress, eta_text
from ace_ros.core.online_mapping import OnlineMappingSession
from ace_ros.ros import diagnostics
from rclpy.node import Node

_PROGRESS_LOG_S = 5.0


class Training:
    """One training run of `session`'s keyframes, for the node `node`."""

    def __init__(self, node: Node, session: OnlineMappingSession,
                 node_diagnostics: diagnostics.Diagnostics) -> None:
        self._node = node
        self._session = session
        self._diagnostics = node_diagnostics
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._worker: Optional[threading.Thread] = None
        self._last_progress_log = 0.0
        #: 0: map written (or not trained yet); 1: mapping failed; 130: cancelled.
        self.exit_code = 0

    @property
    def started(self) -> bool:
        return self._worker is not None

    @property
    def done(self) -> bool:
        """Training ended: the map is written, or mapping failed or was cancelled."""
        return self._done.is_set()

    def start(self, why: str) -> Tuple[bool, str]:
        """(started, message) for ~/finish; `why` goes to the log."""
        session, log = self._session, self._node.get_logger()
        if self._worker is not None:
            return False, f'mapping already {session.state}'
        if session.keyframe_count < 2:
            message = f'cannot train yet: {session.keyframe_count} keyframe(s), mapping needs 2'
            log.warning(message)
            return False, message
        counts = session.status().counts
        log.info(f'{why}: training the map; inputs: ' + ', '.join(
            f'{name} {n}' for name, n in counts.items() if n or name in ('images', 'poses')))
        self._worker = threading.Thread(target=self._train, name='ace_ros_training',
                                        daemon=True)
        self._worker.start()
        queued = session.queued_count
        return True, (f'training started on {session.keyframe_count} keyframes'
                      + (f' ({queued} still being encoded)' if queued else ''))

    def cancel(self, timeout_s: float = 60.0) -> None:
        """Stop training and wait for it (the session logs where the keyframes are)."""
        self._cancel.set()
        if self._worker is not None:
            self._worker.join(timeout=timeout_s)

    def _train(self) -> None:
        log = self._node.get_logger()
        try:  # the session logs the outcome
            self._session.finish(progress=self._on_progress, cancel=self._cancel)
        except MappingCancelled:
            self.exit_code = 130
        except ValueError as error:  # e.g. too few keyframes after the last check
            log.error(f'mapping failed: {error}')
            self.exit_code = 1
        except Exception as error:  # noqa: BLE001 - reported, and the node keeps answering
            log.error(f'mapping failed: {type(error).__name__}: {error}')
            self.exit_code = 1
        finally:
            if self._node.context.ok():  # not once rclpy is shut down
                self._diagnostics.publish()  # the final state, before the node exits
            self._done.set()

    def _on_progress(self, p: Progress) -> None:
        now = time.monotonic()
        if now - self._last_progress_log < _PROGRESS_LOG_S and p.done != p.total:
            return
        self._last_progress_log = now
        log = self._node.get_logger()
        if p.stage == 'keyframes':
            log.info(f'encoding queued keyframes: {p.done}/{p.total}, {p.rate:.1f} img/s, '
                     f'{eta_text(p.eta_s)}')
        elif p.stage == 'train':
            log.info(f'training: iteration {p.done}/{p.total}, loss {p.loss:.3f}, '
                     f'{p.rate:.1f} it/s, {eta_text(p.eta_s)}')
        else:
            log.info(f'encoding augmented passes: image {p.done}/{p.total}, '
                     f'{p.rate:.1f} img/s, {eta_text(p.eta_s)}')
