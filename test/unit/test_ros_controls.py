"""ace_ros.ros.controls without ROS: mode, pause, trigger and the initialpose gate."""

from __future__ import annotations


from ace_ros.core import geometry
from ace_ros.ros.controls import Controls, planar_difference, PoseGate
import numpy as np
import pytest


def _pose(yaw_rad: float, xyz) -> np.ndarray:
    return geometry.make_pose(geometry.axis_angle_to_matrix([0, 0, yaw_rad]), xyz)


def test_continuous_localizes_every_image_until_paused():
    controls = Controls('continuous')
    assert [controls.admit() for _ in range(3)] == [None] * 3
    assert controls.trigger() == (True, 'continuous mode: every image is localized anyway')
    assert 'paused' in controls.pause() and controls.paused
    assert controls.pause() == 'already paused'
    assert controls.admit() == 'paused'
    assert controls.trigger() == (False, 'paused: call ~/resume first')
    assert controls.resume().startswith('resumed') and not controls.paused
    assert controls.resume() == 'not paused'
    assert controls.admit() is None


def test_on_demand_localizes_one_image_per_trigger():
    controls = Controls('on_demand')
    assert controls.admit() == 'untriggered'
    assert controls.trigger()[0] and controls.trigger()[0]  # two triggers: still one image
    assert [controls.admit() for _ in range(3)] == [None, 'untriggered', 'untriggered']
    controls.trigger()
    controls.reset()  # forgets the pending trigger
    assert controls.admit() == 'untriggered'
    controls.trigger()
    controls.pause()  # a pause drops the pending trigger too
    controls.resume()
    assert controls.admit() == 'untriggered'
    controls.mode = 'continuous'
    assert controls.admit() is None


def test_bad_mode_is_refused_by_name():
    with pytest.raises(ValueError, match=r"parameter mode must be one of \['continuous', "
                       r"'on_demand'\], got 'sometimes'"):
        Controls('sometimes')
    controls = Controls()
    with pytest.raises(ValueError, match='parameter mode'):
        controls.mode = 'never'
    assert controls.mode == 'continuous'


@pytest.mark.parametrize('gate_m, gate_deg, match', [
    (0.0, 30.0, 'initialpose_gate_m must be > 0'),
    (-1.0, 30.0, 'initialpose_gate_m must be > 0'),
    (1.0, 0.0, r'initialpose_gate_deg must be in \(0, 180\]'),
    (1.0, 181.0, r'initialpose_gate_deg must be in \(0, 180\]')])
def test_bad_gate_sizes_are_refused(gate_m, gate_deg, match):
    with pytest.raises(ValueError, match=match):
        PoseGate(gate_m, gate_deg)


def test_planar_difference_ignores_height_roll_and_pitch():
    a = _pose(0.1, [1.0, 2.0, 0.0])
    tilted = a @ geometry.make_pose(geometry.axis_angle_to_matrix([0.3, 0, 0]), [0, 0, 0])
    tilted[2, 3] = 1.5  # a hand-held camera above a 2D estimate's z = 0
    d, h = planar_difference(a, tilted)
    assert d == pytest.approx(0.0) and h == pytest.approx(0.0, abs=1e-9)
    d, h = planar_difference(_pose(np.radians(170), [0, 0, 0]),
                             _pose(np.radians(-170), [3, 4, 0]))
    assert d == pytest.approx(5.0) and h == pytest.approx(20.0)  # across +-180 deg
    up = geometry.make_pose(geometry.axis_angle_to_matrix([0, -np.pi / 2, 0]), [0, 0, 0])
    assert planar_difference(a, up)[1] == 0.0  # an x axis pointing up has no heading


def test_gate_rejects_far_poses_until_one_is_near_then_lifts():
    gate = PoseGate(0.5, 20.0)
    assert not gate.pending and gate.check(_pose(0, [9, 9, 0])).accepted  # no prior
    gate.set_prior(_pose(0.0, [1.0, 0.0, 0.0]), stamp_ns=5)
    assert gate.pending and gate.prior_stamp_ns == 5
    far = gate.check(_pose(0.0, [4.0, 4.0, 0.0]))
    assert not far.accepted and far.distance_m == pytest.approx(5.0)
    turned = gate.check(_pose(np.radians(90), [1.0, 0.0, 0.0]))
    assert not turned.accepted and turned.heading_deg == pytest.approx(90.0)
    assert gate.pending
    near = gate.check(_pose(np.radians(10), [1.3, 0.0, 0.0]))
    assert near.accepted and not gate.pending
    assert gate.check(_pose(0, [40, 0, 0])).accepted  # lifted: anything goes again
    gate.set_prior(_pose(0.0, [0, 0, 0]), 0)
    gate.clear()
    assert not gate.pending


def test_gate_prior_moves_with_odometry_once_anchored():
    gate = PoseGate(0.5, 180.0)
    map_from_odom = _pose(0.5, [10.0, -2.0, 0.0])
    odom_from_base_then = _pose(0.0, [1.0, 0.0, 0.0])
    odom_from_base_now = _pose(0.2, [4.0, 1.0, 0.0])  # the robot drove 3 m since
    gate.set_prior(map_from_odom @ odom_from_base_then, stamp_ns=1)
    assert gate.needs_anchor
    gate.anchor(odom_from_base_then)
    assert not gate.needs_anchor
    np.testing.assert_allclose(gate.expected(odom_from_base_now),
                               map_from_odom @ odom_from_base_now, atol=1e-12)
    # Where the robot was when the prior was given: 3+ m from where it is now.
    assert not gate.check(map_from_odom @ odom_from_base_then, odom_from_base_now).accepted
    assert gate.check(map_from_odom @ odom_from_base_now, odom_from_base_now).accepted


def test_gate_without_odometry_keeps_the_prior_where_it_was_given():
    gate = PoseGate(0.5, 180.0)
    prior = _pose(0.0, [1.0, 0.0, 0.0])
    gate.set_prior(prior, 0)
    gate.anchor(None)
    assert not gate.needs_anchor
    np.testing.assert_allclose(gate.expected(_pose(0, [5, 5, 0])), prior)
    with pytest.raises(ValueError, match='initialpose'):
        gate.set_prior(np.zeros((4, 4)), 0)
