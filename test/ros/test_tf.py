"""TF: the ROS-free TransformBuffer (tf2 semantics) and TfInterface over real DDS."""

from __future__ import annotations

from ace_ros.core import geometry
from ace_ros.ros import conversions
from ace_ros.ros.tf import (ConnectivityError, ExtrapolationError, FrameNotFoundError,
                            TfInterface, TransformBuffer)
import numpy as np
import pytest

S = 1_000_000_000


def _pose(yaw_deg: float, xyz) -> np.ndarray:
    return geometry.make_pose(
        geometry.axis_angle_to_matrix(np.array([0, 0, np.radians(yaw_deg)])), np.array(xyz))


@pytest.fixture
def tree() -> TransformBuffer:
    """map -> odom (dynamic, 1 s and 2 s) -> base (dynamic) -> camera (static)."""
    buf = TransformBuffer(cache_duration_s=10.0)
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


def test_cache_duration_and_time_jumping_back():
    buf = TransformBuffer(cache_duration_s=1.0)
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


def test_reparenting_replaces_history_and_bad_input_is_refused():
    buf = TransformBuffer()
    buf.set_transform('a', 'c', S, np.eye(4))
    buf.set_transform('b', 'c', 2 * S, np.eye(4))
    assert buf.frames() == ['b', 'c']
    with pytest.raises(ValueError, match='two different frames'):
        buf.set_transform('c', 'c', S, np.eye(4))
    with pytest.raises(ValueError, match=r'shape \(4, 4\)'):
        buf.set_transform('a', 'd', S, np.eye(3))


def test_lookup_waits_for_data_from_another_thread():
    import threading

    buf = TransformBuffer()
    threading.Timer(0.1, buf.set_transform, ('a', 'b', S, np.eye(4))).start()
    np.testing.assert_allclose(buf.lookup('a', 'b', S, timeout_s=5.0), np.eye(4))
    with pytest.raises(FrameNotFoundError):
        buf.lookup('a', 'zzz', S, timeout_s=0.05)


def test_tf_interface_over_dds(make_node, spin_until):
    """Broadcaster and listener in two nodes: dynamic /tf, latched /tf_static, bad quaternions."""
    sender = TfInterface(make_node('tf_sender'), use_tf2_ros=False, listen=False)
    stamp = conversions.ns_to_stamp(5 * S)
    sender.send_static([conversions.to_transform_stamped(
        _pose(0, [0, 0, 1]), stamp, 'base', 'camera')])
    # A second static transform must not evict the first (one latched message holds all).
    sender.send_static([conversions.to_transform_stamped(
        _pose(0, [0, 1, 0]), stamp, 'base', 'lidar')])
    # The listener joins after the static transforms were sent: transient local delivers them.
    listener_node = make_node('tf_listener')
    listener = TfInterface(listener_node, use_tf2_ros=False)
    assert spin_until([listener_node], lambda: listener.can_transform('camera', 'lidar'))
    np.testing.assert_allclose(listener.lookup('camera', 'lidar')[:3, 3], [0, 1, -1])

    bad = conversions.to_transform_stamped(np.eye(4), stamp, 'odom', 'broken')
    bad.transform.rotation.w = 0.0
    for t in (5, 6):
        sender.send([conversions.to_transform_stamped(
            _pose(0, [t, 0, 0]), conversions.ns_to_stamp(t * S), 'odom', 'base'), bad])
    assert spin_until([listener_node], lambda: listener.can_transform('odom', 'base', 6 * S))
    got = listener.lookup('odom', 'camera', int(5.5 * S))
    np.testing.assert_allclose(got[:3, 3], [5.5, 0, 1], atol=1e-9)
    assert not listener.can_transform('odom', 'broken')  # invalid quaternion was ignored
