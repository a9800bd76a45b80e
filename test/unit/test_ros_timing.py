"""ace_ros.ros.timing without ROS: time jumps, monotonic map -> odom stamps, counters."""

from __future__ import annotations

import threading

from ace_ros.ros.timing import Counters, FutureDatedTransform, StampFloor, TimeJumpGuard
import pytest

S = 1_000_000_000


def test_stamps_going_back_past_the_threshold_are_one_jump():
    guard = TimeJumpGuard(threshold_ns=S)
    assert guard.stamp(100 * S) is None
    assert guard.stamp(101 * S) is None
    assert guard.stamp(int(100.5 * S)) is None  # disorder within the threshold
    assert guard.stamp(100 * S) is None  # 1 s back from the newest: not more than it
    assert guard.newest_ns == 101 * S
    assert guard.stamp(5 * S) == 96 * S  # the bag looped
    assert guard.newest_ns == 5 * S
    assert guard.stamp(6 * S) is None and guard.stamp(5 * S) is None  # the new time goes on
    # Slow drift back is measured from the newest stamp, not from the previous one.
    guard = TimeJumpGuard(threshold_ns=S)
    got = [guard.stamp(int((10 - 0.4 * i) * S)) for i in range(4)]
    assert got[:3] == [None, None, None] and got[3] == pytest.approx(1.2 * S)


def test_a_jump_seen_in_stamps_and_on_the_clock_is_reported_once():
    # The stamps first, then /clock: the clock's jump is the same one.
    guard = TimeJumpGuard(threshold_ns=S)
    guard.stamp(200 * S)
    assert guard.stamp(1 * S) == 199 * S
    guard.stamp(2 * S)
    assert guard.clock_jumped(int(1.5 * S)) is False
    # ... and a later clock jump is a new one.
    guard.stamp(50 * S)
    assert guard.clock_jumped(3 * S) is True
    # The clock first, then the stamps: the first stamp after it starts the new time.
    guard = TimeJumpGuard(threshold_ns=S)
    guard.stamp(200 * S)
    assert guard.clock_jumped(0) is True
    assert guard.stamp(int(0.1 * S)) is None and guard.newest_ns == int(0.1 * S)
    # A clock jump without image stamps at all is a jump.
    assert TimeJumpGuard(threshold_ns=S).clock_jumped(10 * S) is True
    # The stamps jumped, but not to the clock's new time: the clock's jump is its own.
    guard = TimeJumpGuard(threshold_ns=S)
    guard.stamp(200 * S)
    guard.stamp(100 * S)
    assert guard.clock_jumped(10 * S) is True


def test_the_threshold_must_be_positive():
    with pytest.raises(ValueError, match='threshold'):
        TimeJumpGuard(0)


def test_stamp_floor_never_goes_backwards():
    floor = StampFloor()
    assert floor.next(100) == 100
    assert floor.next(150, new_value=False) == 150
    assert floor.next(150, new_value=False) is None
    assert floor.next(120) == 151
    floor.reset()
    assert floor.next(10) == 10


def test_map_odom_stamps_are_monotonic_across_updates_and_rebroadcasts():
    """Updates at image stamp + tolerance and re-broadcasts at now + tolerance, interleaved
    with the images older than the clock (processing latency): one increasing sequence."""
    tf = FutureDatedTransform(tolerance_ns=S // 10)
    epoch = tf.epoch
    assert tf.rebroadcast(5 * S) is None  # nothing to re-broadcast yet
    sent = [tf.update('a', 10 * S, epoch)]
    assert sent == [10 * S + S // 10]
    for now in (11, 12):  # the clock runs ahead of the images
        value, when = tf.rebroadcast(now * S)
        assert value == 'a'
        sent.append(when)
    sent.append(tf.update('b', int(10.5 * S), epoch))  # an image older than the last stamp
    assert sent[-1] == 12 * S + S // 10 + 1  # just after, never before
    assert tf.rebroadcast(12 * S) is None  # would not move forward: nothing sent
    sent.append(tf.rebroadcast(13 * S)[1])
    assert tf.value == 'b'
    assert all(a < b for a, b in zip(sent, sent[1:])), sent
    assert tf.rebroadcast(0) is None  # simulated time before the first /clock


def test_map_odom_restart_starts_a_new_epoch():
    tf = FutureDatedTransform(tolerance_ns=0)
    old = tf.epoch
    tf.update('a', 100 * S, old)
    # A map reload: the value is forgotten, the stamps stay monotonic.
    new = tf.restart(time_jumped=False)
    assert new != old and tf.epoch == new and tf.value is None
    assert tf.update('stale', 101 * S, old) is None and tf.value is None
    assert tf.update('b', 50 * S, new) == 100 * S + 1
    # Time jumped back: the stamps start again from the new time.
    newer = tf.restart(time_jumped=True)
    assert tf.last_stamp_ns is None and tf.rebroadcast(10 * S) is None
    assert tf.update('c', 5 * S, newer) == 5 * S
    assert tf.rebroadcast(6 * S) == ('c', 6 * S)
    # forget(): no re-broadcast, but no going back either.
    tf.forget()
    assert tf.rebroadcast(7 * S) is None
    assert tf.update('d', 1 * S, newer) == 6 * S + 1


def test_counters_from_many_threads_lose_nothing():
    counters = Counters(['received', 'processed'])

    def bump(name: str) -> None:
        for _ in range(20000):
            counters.add(name)

    threads = [threading.Thread(target=bump, args=(name,))
               for name in ('received', 'received', 'processed', 'received')]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counters.snapshot() == {'received': 60000, 'processed': 20000}
    assert counters['processed'] == 20000
    with pytest.raises(KeyError):
        counters.add('recieved')  # a typo counts nothing silently
