"""The ROS-free TF tree (tf2 semantics) shared by TfInterface and the bag reader."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest

from ace_ros.core import geometry
from ace_ros.core.tf_tree import (ConnectivityError, ExtrapolationError, FrameNotFoundError,
                                  TfTree, TransformError)

S = 1_000_000_000


def _pose(yaw_deg: float, xyz) -> np.ndarray:
    return geometry.make_pose(
        geometry.axis_angle_to_matrix(np.array([0, 0, np.radians(yaw_deg)])), np.array(xyz))


@pytest.fixture
def tree() -> TfTree:
    """map -> odom (dynamic, 1 s and 2 s) -> base (dynamic) -> camera (static)."""
    buf = TfTree(cache_duration_s=10.0)
    buf.set_transform('map', 'odom', 1 * S, _pose(0, [0, 0, 0]))
    buf.set_transform('map', 'odom', 2 * S, _pose(90, [2, 0, 0]))
    for t in (1, 2, 3):
        buf.set_transform('odom', 'base', t * S, _pose(0, [t, 0, 0]))
    buf.set_transform('base', 'camera', 0, _pose(-90, [0.1, 0, 0.5]), static=True)
    return buf


def test_chain_lookup_composes_links(tree):
    got = tree.lookup('map', 'camera', 2 * S)
    want = _pose(90, [2, 0, 0]) @ _pose(0, [2, 0, 0]) @ _pose(-90, [0.1, 0, 0.5])
    np.testing.assert_allclose(got, want, atol=1e-12)
    # The inverse direction and a lookup between siblings through the common ancestor.
    np.testing.assert_allclose(tree.lookup('camera', 'map', 2 * S), geometry.invert_pose(want),
                               atol=1e-12)
    tree.set_transform('odom', 'marker', 0, _pose(0, [5, 5, 0]), static=True)
    np.testing.assert_allclose(
        tree.lookup('base', 'marker', 2 * S),
        geometry.invert_pose(_pose(0, [2, 0, 0])) @ _pose(0, [5, 5, 0]), atol=1e-12)
    np.testing.assert_allclose(tree.lookup('base', 'base', 0), np.eye(4))


def test_interpolation_between_samples(tree):
    half = tree.lookup('map', 'odom', int(1.5 * S))
    np.testing.assert_allclose(half[:3, 3], [1, 0, 0], atol=1e-12)
    assert geometry.rotation_angle_deg(half[:3, :3]) == pytest.approx(45.0)
    np.testing.assert_allclose(tree.lookup('odom', 'base', int(2.25 * S))[:3, 3], [2.25, 0, 0])


def test_latest_common_time_and_static_links(tree):
    # Stamp 0: the newest time every dynamic link has: map->odom ends at 2 s.
    np.testing.assert_allclose(tree.lookup('map', 'base', 0),
                               _pose(90, [2, 0, 0]) @ _pose(0, [2, 0, 0]), atol=1e-12)
    # A static link is valid at any time, even far from the dynamic samples.
    np.testing.assert_allclose(tree.lookup('base', 'camera', 1000 * S),
                               _pose(-90, [0.1, 0, 0.5]))


def test_extrapolation_is_refused_with_the_data_range(tree):
    with pytest.raises(ExtrapolationError, match=r'future.*map.*odom.*1\.0+ to 2\.0+ s'):
        tree.lookup('map', 'base', 3 * S)
    with pytest.raises(ExtrapolationError, match='past'):
        tree.lookup('odom', 'base', S // 2)


def test_unknown_and_disconnected_frames(tree):
    with pytest.raises(FrameNotFoundError, match="frame 'nowhere' does not exist.*known frames"):
        tree.lookup('map', 'nowhere')
    tree.set_transform('world', 'island', 0, np.eye(4), static=True)
    with pytest.raises(ConnectivityError, match="roots 'map' and 'world'"):
        tree.lookup('map', 'island')
    # The errors share one base class, which callers catch whatever the backend.
    assert issubclass(FrameNotFoundError, TransformError)
    assert issubclass(ConnectivityError, TransformError)
    assert issubclass(ExtrapolationError, TransformError)


def test_cache_duration_and_time_jumping_back():
    buf = TfTree(cache_duration_s=1.0)
    for t in range(0, 5):
        buf.set_transform('a', 'b', t * S, _pose(0, [t, 0, 0]))
    with pytest.raises(ExtrapolationError):
        buf.lookup('a', 'b', 2 * S)  # older than 1 s before the newest sample: pruned
    buf.lookup('a', 'b', 3 * S)
    # A sample far older than the newest (a bag restarted) restarts the history.
    buf.set_transform('a', 'b', 0, _pose(0, [7, 0, 0]))
    np.testing.assert_allclose(buf.lookup('a', 'b', 0)[:3, 3], [7, 0, 0])
    buf.clear()
    assert buf.frames() == []


@pytest.mark.parametrize('unlimited', [None, float('inf')])
def test_unlimited_cache_keeps_a_whole_recording(unlimited):
    # The bag reader's setting: nothing is pruned, and samples arriving out of stamp order
    # (TF in log-time order) are sorted in rather than taken as time jumping back.
    buf = TfTree(cache_duration_s=unlimited)
    assert buf.cache_ns is None
    for t in (100, 0, 50, 3600):
        buf.set_transform('a', 'b', t * S, _pose(0, [t, 0, 0]))
    np.testing.assert_allclose(buf.lookup('a', 'b', 0)[:3, 3], [3600, 0, 0])
    np.testing.assert_allclose(buf.lookup('a', 'b', 1)[:3, 3], [1e-9, 0, 0], atol=1e-12)
    np.testing.assert_allclose(buf.lookup('a', 'b', 25 * S)[:3, 3], [25, 0, 0])
    np.testing.assert_allclose(buf.lookup('a', 'b', 75 * S)[:3, 3], [75, 0, 0])
    # A repeated stamp: the later sample replaces the earlier one (a later broadcast wins).
    buf.set_transform('a', 'b', 50 * S, _pose(0, [-1, 0, 0]))
    np.testing.assert_allclose(buf.lookup('a', 'b', 50 * S)[:3, 3], [-1, 0, 0])
    for bad in (0.0, -1.0, float('nan')):
        with pytest.raises(ValueError, match='cache_duration_s must be > 0'):
            TfTree(cache_duration_s=bad)


def test_lookup_many_through_a_static_mount_on_a_dynamic_link():
    # The bag reader's lookup: world -> camera at every image stamp, through
    # map -(dynamic)-> base -(static)-> camera, with a limit on the gap bridged.
    buf = TfTree(cache_duration_s=None)
    for t in (1, 2, 4):
        buf.set_transform('map', 'base', t * S, _pose(0, [t, 0, 0]))
    buf.set_transform('base', 'camera', 0, _pose(-90, [0, 0, 1]), static=True)
    stamps = [0, 1 * S, int(1.5 * S), 3 * S, 4 * S, 5 * S]
    got = buf.lookup_many('map', 'camera', stamps, max_gap_s=1.5)
    # 0 is taken literally (before the data, not "latest"); 3 s sits in a 2 s gap.
    assert [g is None for g in got] == [True, False, False, True, False, True]
    np.testing.assert_allclose(got[2], _pose(0, [1.5, 0, 0]) @ _pose(-90, [0, 0, 1]),
                               atol=1e-12)
    np.testing.assert_allclose(got[4], _pose(0, [4, 0, 0]) @ _pose(-90, [0, 0, 1]))
    # Without a gap limit, 3 s is interpolated across the gap.
    np.testing.assert_allclose(buf.lookup_many('map', 'camera', [3 * S])[0][:3, 3], [3, 0, 1],
                               atol=1e-12)
    # The single lookup refuses the gap with an error naming the link and the samples.
    with pytest.raises(ExtrapolationError, match=r"'map' -> 'base' has samples at 2\.0+ and "
                                                 r'4\.0+ s, further apart than 1\.5'):
        buf.lookup('map', 'camera', 3 * S, max_gap_s=1.5)
    # Frames that are never chained raise whatever the stamps, as there is nothing to wait for.
    with pytest.raises(FrameNotFoundError, match="frame 'odom' does not exist"):
        buf.lookup_many('odom', 'camera', stamps)
    with pytest.raises(ValueError, match='max_gap_s must be > 0'):
        buf.lookup_many('map', 'camera', stamps, max_gap_s=0)


def test_leading_slashes_are_dropped():
    # ROS 1 bags name frames '/map'; tf2 also strips the slash when storing.
    buf = TfTree()
    buf.set_transform('/map', '/camera', S, _pose(0, [1, 2, 3]))
    assert buf.frames() == ['camera', 'map']
    np.testing.assert_allclose(buf.lookup('/map', 'camera', S)[:3, 3], [1, 2, 3])


def test_reparenting_replaces_history_and_bad_input_is_refused(caplog):
    buf = TfTree()
    buf.set_transform('a', 'c', S, np.eye(4))
    with caplog.at_level(logging.WARNING, logger='ace_ros.core.tf_tree'):
        buf.set_transform('b', 'c', 2 * S, np.eye(4))
        buf.set_transform('a', 'c', 3 * S, np.eye(4))
    assert buf.frames() == ['a', 'c']
    # Warned once per frame, so a frame flapping between parents does not flood the log.
    assert len(caplog.records) == 1
    assert "'c' changed from dynamic parent 'a' to dynamic parent 'b'" in caplog.text
    with pytest.raises(ExtrapolationError):
        buf.lookup('a', 'c', S)  # the history under 'a' restarted at 3 s
    with pytest.raises(ValueError, match='two different frames'):
        buf.set_transform('c', 'c', S, np.eye(4))
    with pytest.raises(ValueError, match='two different frames'):
        buf.set_transform('', 'c', S, np.eye(4))
    with pytest.raises(ValueError, match=r'shape \(4, 4\)'):
        buf.set_transform('a', 'd', S, np.eye(3))


def test_a_loop_is_a_connectivity_error():
    buf = TfTree()
    buf.set_transform('a', 'b', S, np.eye(4))
    buf.set_transform('b', 'c', S, np.eye(4))
    buf.set_transform('c', 'a', S, np.eye(4))
    with pytest.raises(ConnectivityError, match='loop'):
        buf.lookup('a', 'c', S)


def test_lookup_waits_for_data_from_another_thread():
    buf = TfTree()
    threading.Timer(0.1, buf.set_transform, ('a', 'b', S, np.eye(4))).start()
    np.testing.assert_allclose(buf.lookup('a', 'b', S, timeout_s=5.0), np.eye(4))
    with pytest.raises(FrameNotFoundError):
        buf.lookup('a', 'zzz', S, timeout_s=0.05)
    assert buf.can_transform('a', 'b', S)
    assert not buf.can_transform('a', 'b', 2 * S)
