"""TF: TfInterface without tf2_ros over real DDS (the tree is test/unit/test_tf_tree.py)."""

from __future__ import annotations

from ace_ros.core import geometry, tf_tree
from ace_ros.ros import conversions
from ace_ros.ros.tf import (ConnectivityError, ExtrapolationError, FrameNotFoundError,
                            StampFloor, TfInterface, TransformBuffer, TransformError)
import numpy as np

S = 1_000_000_000


def _pose(yaw_deg: float, xyz) -> np.ndarray:
    return geometry.make_pose(
        geometry.axis_angle_to_matrix(np.array([0, 0, np.radians(yaw_deg)])), np.array(xyz))


def test_the_ros_module_re_exports_the_core_tree():
    # Nodes and older code import these names from ace_ros.ros.tf; the tree logic itself is
    # tested without ROS in test/unit/test_tf_tree.py.
    assert TransformBuffer is tf_tree.TfTree
    assert (TransformError, FrameNotFoundError, ConnectivityError, ExtrapolationError) == (
        tf_tree.TransformError, tf_tree.FrameNotFoundError, tf_tree.ConnectivityError,
        tf_tree.ExtrapolationError)


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


def test_parent_and_connected_over_dds(make_node, spin_until):
    """parent(): the frame's parent as heard (own transforms too); connected(): in one tree."""
    sender = TfInterface(make_node('tf_parent_sender'), use_tf2_ros=False, listen=False)
    node = make_node('tf_parent_listener')
    tf = TfInterface(node, use_tf2_ros=False)
    sender.send_static([conversions.to_transform_stamped(
        _pose(0, [0, 0, 1]), conversions.ns_to_stamp(0), 'base_link', 'camera')])
    assert spin_until([node], lambda: tf.parent('camera') == 'base_link')
    assert tf.parent('base_link') is None and tf.parent('nowhere') is None
    assert tf.connected('base_link', 'camera') and not tf.connected('odom', 'base_link')
    sender.send([conversions.to_transform_stamped(
        _pose(0, [1, 0, 0]), conversions.ns_to_stamp(5 * S), 'odom', 'base_link')])
    assert spin_until([node], lambda: tf.parent('base_link') == 'odom')
    assert tf.connected('odom', 'camera')
    sender.send([conversions.to_transform_stamped(
        _pose(0, [1, 0, 0]), conversions.ns_to_stamp(5 * S), 'world', 'island')])
    assert spin_until([node], lambda: tf.parent('island') == 'world')
    assert not tf.connected('odom', 'island')  # both known, two trees
    tf.clear()  # dynamic links are forgotten, static ones kept
    assert tf.parent('base_link') is None and tf.parent('camera') == 'base_link'


def test_stamp_floor_never_goes_backwards():
    floor = StampFloor()
    assert floor.next(100) == 100
    assert floor.next(150, new_value=False) == 150  # a re-broadcast moving forward
    assert floor.next(150, new_value=False) is None  # ... not moving: nothing to send
    assert floor.next(120, new_value=False) is None
    assert floor.next(120) == 151  # a new value older than the last stamp: just after it
    assert floor.next(151) == 152  # never the same stamp twice (tf2 drops repeats)
    assert floor.next(300) == 300
    floor.reset()  # time jumped back
    assert floor.next(10) == 10
