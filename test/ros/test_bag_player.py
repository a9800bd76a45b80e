"""`BagPlayer` and `ace-ros play`: stored CDR bytes over real DDS, with timing and /clock."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from ace_ros.ros.bag_player import BagPlayer
from ace_ros.bag_tools import ExportOptions, export_bag
from ace_ros.core.types import Frame

N_FRAMES, RATE_HZ = 10, 20.0


@pytest.fixture(scope='module', params=['mcap', 'ros1'])
def bag(tmp_path_factory, request):
    """10 random 64x48 posed frames at 20 Hz, with a /tf_static mount (ROS 1 bags are
    converted to CDR when played)."""
    rng = np.random.default_rng(0)
    K = np.array([[50.0, 0, 31.5], [0, 50.0, 23.5], [0, 0, 1]])
    frames = [Frame(f'{i}', rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), K,
                    np.eye(4), stamp=0.0) for i in range(N_FRAMES)]
    path = tmp_path_factory.mktemp('bags') / ('bag.bag' if request.param == 'ros1' else 'bag')
    export_bag(frames, path, ExportOptions(storage=request.param, rate=RATE_HZ,
                                           start_time=100.0, base_frame='base_link'),
               stamped=False)
    return path, frames


def _subscribe(node, received):
    from rclpy.qos import DurabilityPolicy, QoSProfile
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image
    from tf2_msgs.msg import TFMessage
    node.create_subscription(Image, '/camera/image_raw', lambda m: received['image'].append(
        (time.monotonic(), m)), 10)
    node.create_subscription(Clock, '/clock', lambda m: received['clock'].append(m), 100)
    latched = QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    node.create_subscription(TFMessage, '/tf_static', lambda m: received['tf_static'].append(m),
                             latched)


def test_player_publishes_every_message_with_timing_and_clock(bag, make_node, spin_until):
    path, frames = bag
    received = {'image': [], 'clock': [], 'tf_static': []}
    listener = make_node('listener')
    _subscribe(listener, received)
    player = BagPlayer(path, rate=2.0, clock_hz=50.0)
    result = {}
    thread = threading.Thread(target=lambda: result.update(stats=player.run(
        make_node('player'), wait_for_subscribers=['/camera/image_raw', '/clock'])))
    thread.start()
    last_ns = round((100.0 + (N_FRAMES - 1) / RATE_HZ) * 1e9)

    def done() -> bool:
        clock = received['clock']
        return len(received['image']) == N_FRAMES and bool(clock) and (
            clock[-1].clock.sec * 10**9 + clock[-1].clock.nanosec == last_ns)

    try:
        assert spin_until([listener], done, timeout_s=20.0)
    finally:
        player.stop()
        thread.join(timeout=10)
    stats = result['stats']
    assert stats.messages['/camera/image_raw'] == N_FRAMES
    assert stats.messages['/tf_static'] == 1 and stats.skipped_topics == {}
    images = [m for _, m in received['image']]
    for frame, msg in zip(frames, images):
        np.testing.assert_array_equal(np.asarray(msg.data).reshape(48, 64, 3), frame.image)
    assert [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in images] == [
        round((100.0 + i / RATE_HZ) * 1e9) for i in range(N_FRAMES)]
    # 9 intervals of 50 ms at rate 2: 0.225 s of wall time between first and last image.
    span = received['image'][-1][0] - received['image'][0][0]
    assert 0.15 < span < 1.5, span  # upper bound loose: a shared machine may lag
    assert len(received['tf_static']) == 1
    clock = [c.clock.sec * 10**9 + c.clock.nanosec for c in received['clock']]
    # 50 Hz over 0.225 s plus one tick per message time, never going back.
    assert clock == sorted(clock) and len(clock) >= N_FRAMES
    assert clock[0] == round(100.0 * 1e9) and clock[-1] == last_ns


def test_cli_play_runs_as_a_process(bag, make_node, spin_until, ros_env):
    path, _ = bag
    received = {'image': [], 'clock': [], 'tf_static': []}
    listener = make_node('cli_listener')
    _subscribe(listener, received)
    process = subprocess.Popen(
        [sys.executable, '-m', 'ace_ros.cli', 'play', str(path), '--rate', '4',
         '--wait-for', '/camera/image_raw'], env=ros_env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        got_all = spin_until([listener], lambda: len(received['image']) == N_FRAMES,
                             timeout_s=60.0)
        if not got_all:
            process.kill()
        output = process.communicate(timeout=30)[0]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for _, m in received['image']]
    assert got_all, (f"{len(received['image'])} of {N_FRAMES} images (stamps {stamps}); the "
                     f'player said:\n{output}')
    assert process.returncode == 0, output
    assert f'/camera/image_raw {N_FRAMES}' in output
