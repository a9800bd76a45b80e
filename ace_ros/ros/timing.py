"""Time and thread bookkeeping for the localization node, free of ROS (tests need no rclpy).

- `TimeJumpGuard` notices time going backwards, in image stamps or on the node's clock (a
  bag looped, simulated time reset), once per jump.
- `StampFloor` keeps the stamps of one transform from going backwards.
- `FutureDatedTransform` is the one home of map -> odom: its latest value, the one place its
  stamp is computed (base stamp + tolerance, through a `StampFloor`), and an epoch that
  changes when time jumps back or the map is reloaded, so that a frame localized before
  that cannot update it.
- `Counters`: named event counters shared by the subscriber callbacks and the worker thread.
- `LatestSlot`: the one-image mailbox from the image callback to the worker thread.
- `WarmUps`: which image sizes each localizer was warmed up for (compiled before use).

All of them are thread-safe.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, Iterable, Optional, Set, Tuple
import weakref


class TimeJumpGuard:
    """Tells when time went backwards by more than `threshold_ns`, once per jump.

    Image stamps are fed to `stamp`; a stamp older than the newest one seen by more than
    the threshold is a jump, and the stamps start again from it. Small disorder (within the
    threshold) is not. The node's clock jumping back (rclpy's jump callback) is fed to
    `clock_jumped`: the same jump is often seen both ways (a looped bag with --clock sends
    both old stamps and an old /clock), and whichever comes second is not a new jump.
    """

    def __init__(self, threshold_ns: int) -> None:
        if threshold_ns <= 0:
            raise ValueError(f'the time jump threshold must be > 0 s, got {threshold_ns} ns')
        self.threshold_ns = int(threshold_ns)
        self._newest_ns: Optional[int] = None  # newest image stamp since the last jump
        self._stamps_jumped = False  # the stamps jumped and the clock has not yet
        self._lock = threading.Lock()

    @property
    def newest_ns(self) -> Optional[int]:
        with self._lock:
            return self._newest_ns

    def stamp(self, stamp_ns: int) -> Optional[int]:
        """Feed an image stamp: how far back it jumped (ns, > 0) when it is a jump, else
        None."""
        stamp_ns = int(stamp_ns)
        with self._lock:
            newest = self._newest_ns
            if newest is not None and stamp_ns < newest - self.threshold_ns:
                self._newest_ns = stamp_ns
                self._stamps_jumped = True
                return newest - stamp_ns
            self._newest_ns = stamp_ns if newest is None else max(newest, stamp_ns)
            return None

    def clock_jumped(self, now_ns: int) -> bool:
        """The clock jumped back to `now_ns`: True when this is a new jump (reset), False
        when the image stamps already showed it (they are no newer than the new time, give
        or take the threshold)."""
        with self._lock:
            seen = (self._stamps_jumped and self._newest_ns is not None
                    and self._newest_ns <= int(now_ns) + self.threshold_ns)
            self._stamps_jumped = False
            if seen:
                return False
            self._newest_ns = None  # the next image stamp starts the new time
            return True


class StampFloor:
    """Stamps for one transform that never go backwards.

    A future-dated transform (map -> odom at the image stamp + transform_tolerance, re-sent
    at now + transform_tolerance) must not be followed by an older stamp: tf2 would then
    interpolate between the new value and the older value that is dated later. `next`
    gives the stamp to send; `reset` forgets the past (time jumped back).
    """

    def __init__(self) -> None:
        self.last_ns: Optional[int] = None

    def next(self, candidate_ns: int, new_value: bool = True) -> Optional[int]:
        """The stamp to send for `candidate_ns`.

        A new value is always sent: at `candidate_ns`, or 1 ns after the last stamp if that
        is not earlier (tf2 drops a repeated stamp). A re-broadcast of the same value
        (`new_value` False) that would not move forward returns None: send nothing.
        """
        candidate_ns = int(candidate_ns)
        if self.last_ns is not None and candidate_ns <= self.last_ns:
            if not new_value:
                return None
            candidate_ns = self.last_ns + 1
        self.last_ns = candidate_ns
        return candidate_ns

    def reset(self) -> None:
        self.last_ns = None


class FutureDatedTransform:
    """One future-dated transform (map -> odom, as AMCL's): value, stamps, epoch.

    Every stamp comes from here: `update` (a new value, for an image stamp) and `rebroadcast`
    (the same value, for the clock's now) both send at base + `tolerance_ns`, never older
    than the last stamp sent (`StampFloor`). `restart` starts a new epoch: the value is
    forgotten, and after a time jump the stamps start again. Callers pass the epoch they
    captured when their frame arrived; an update from an older epoch is refused.
    """

    def __init__(self, tolerance_ns: int = 0) -> None:
        self.tolerance_ns = int(tolerance_ns)
        self._value: Any = None
        self._floor = StampFloor()
        self._epoch = 0
        self._lock = threading.Lock()

    @property
    def epoch(self) -> int:
        with self._lock:
            return self._epoch

    @property
    def value(self) -> Any:
        with self._lock:
            return self._value

    @property
    def last_stamp_ns(self) -> Optional[int]:
        with self._lock:
            return self._floor.last_ns

    def update(self, value: Any, stamp_ns: int, epoch: int) -> Optional[int]:
        """Store a new value measured at `stamp_ns`: the stamp to send it at, or None when
        `epoch` is over (time jumped back or the map changed since the frame arrived)."""
        with self._lock:
            if epoch != self._epoch:
                return None
            self._value = value
            return self._floor.next(int(stamp_ns) + self.tolerance_ns, new_value=True)

    def rebroadcast(self, now_ns: int) -> Optional[Tuple[Any, int]]:
        """(value, stamp) to re-send at `now_ns`, or None: no value, a clock at 0 (simulated
        time before the first /clock), or a stamp that would not move forward."""
        with self._lock:
            if self._value is None or now_ns <= 0:
                return None
            when = self._floor.next(int(now_ns) + self.tolerance_ns, new_value=False)
            return None if when is None else (self._value, when)

    def forget(self) -> None:
        """No value to re-broadcast (another transform is published meanwhile); the stamps
        stay monotonic."""
        with self._lock:
            self._value = None

    def restart(self, time_jumped: bool) -> int:
        """A new epoch (returned): the value is forgotten; with `time_jumped`, the stamps
        start again from whatever comes next."""
        with self._lock:
            self._epoch += 1
            self._value = None
            if time_jumped:
                self._floor.reset()
            return self._epoch


class Counters:
    """Named counters, incremented from any thread; `snapshot` reads them all at once."""

    def __init__(self, names: Iterable[str]) -> None:
        self._counts: Dict[str, int] = {name: 0 for name in names}
        self._lock = threading.Lock()

    def add(self, name: str, n: int = 1) -> None:
        """Add `n` to `name` (KeyError for a name not declared: a typo would count
        nothing)."""
        with self._lock:
            self._counts[name] += n

    def __getitem__(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def snapshot(self) -> Dict[str, int]:
        with self._lock:
            return dict(self._counts)


class LatestSlot:
    """A one-item mailbox: `put` replaces what was not taken yet, `take` waits for an item.

    The image callback puts, the worker takes: the worker always gets the newest image and
    nothing queues up behind a slow localization. `dropped` counts replaced items.
    """

    def __init__(self) -> None:
        self._item: Any = None
        self._cond = threading.Condition()
        self._closed = False
        self.dropped = 0

    def put(self, item: Any) -> bool:
        """Store `item`; True when it replaced an item nobody took (a dropped frame)."""
        with self._cond:
            replaced = self._item is not None
            self.dropped += replaced
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout_s: Optional[float] = None) -> Any:
        """The newest item (removing it), or None after `timeout_s` or once closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._item is not None or self._closed, timeout_s)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class WarmUps:
    """The image sizes each model (a `Localizer`) was warmed up for, and the last warm-up.

    Models are held weakly: a map replaced by a reload takes its record with it. `needed`
    and `done` may be called from the worker and from a reload's thread.
    """

    def __init__(self) -> None:
        self._sizes: 'weakref.WeakKeyDictionary[Any, Set[Tuple[int, int]]]' = \
            weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        #: Seconds the last warm-up took, and the 'WxH' it was for ('' before one).
        self.last_s, self.last_size = 0.0, ''

    def needed(self, model: Any, width: int, height: int) -> bool:
        with self._lock:
            return (int(width), int(height)) not in self._sizes.get(model, set())

    def done(self, model: Any, width: int, height: int, seconds: float) -> None:
        with self._lock:
            self._sizes.setdefault(model, set()).add((int(width), int(height)))
            self.last_s, self.last_size = float(seconds), f'{int(width)}x{int(height)}'
