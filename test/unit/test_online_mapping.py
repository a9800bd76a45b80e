"""Online mapping session: stamp matching, rejections, keyframes, training, recovery."""

from __future__ import annotations

import collections
import gc
import logging
import threading
import time
import weakref

import numpy as np
import pytest
import torch

from ace_ros.core import geometry
from ace_ros.core import mapper as mapper_module
from ace_ros.core.config import LocalizationConfig, mapping_config
from ace_ros.core.localizer import Localizer
from ace_ros.core.mapfile import load_map, MapCloud
from ace_ros.core.mapper import MappingCancelled
from ace_ros.core.online_mapping import COUNTERS, OnlineMappingConfig, OnlineMappingSession
from ace_ros.core.pose_track import PoseTrack, check_rigid_pose, stamp_name
from ace_ros.data.ace_layout import AceLayoutSource, write_ace_scene
from ace_ros.data.synthetic import SyntheticSceneConfig, generate_frames

HEIGHT = 64
MS = 1_000_000
T0 = 1_700_000_000 * 1_000_000_000  # a realistic epoch stamp: float seconds would lose ns
PERIOD = 100 * MS


@pytest.fixture(scope='module')
def frames():
    scene = SyntheticSceneConfig(seed=1, width=80, height=HEIGHT, focal=70.0, n_train=10,
                                 n_test=2, texel_size=0.02)
    return list(generate_frames(scene, 'train')), list(generate_frames(scene, 'test'))


def _cfg(**overrides):
    values = dict(image_height=HEIGHT, samples_per_image=40, batch_size=128,
                  max_iterations=3, device='cpu', encoder='random:0')
    values.update(overrides)
    return mapping_config('tiny', **values)


_SESSIONS = []


@pytest.fixture(autouse=True)
def _close_sessions():
    yield
    while _SESSIONS:
        _SESSIONS.pop().close()


def _session(tmp_path, cfg=None, **online):
    # Training while collecting only where a test asks for it: the other tests count
    # encoder calls and time the queue, which a worker busy training would blur.
    values = dict(map_path=str(tmp_path / 'room.ace'), min_translation_m=0.05,
                  min_rotation_deg=5.0, max_keyframes=50, train_while_collecting=False)
    values.update(online)
    session = OnlineMappingSession(cfg or _cfg(), OnlineMappingConfig(**values),
                                   write_scene=write_ace_scene)
    _SESSIONS.append(session)
    return session


def _gate_encoder(session):
    """Make the session's encoder wait for the returned Event (and count its calls)."""
    gate, calls = threading.Event(), []
    encode = session._mapper.add_to_buffer

    def gated(buffer, frame, *rest):
        calls.append(frame.name)
        assert gate.wait(30.0), 'the test never opened the encoder gate'
        return encode(buffer, frame, *rest)

    session._mapper.add_to_buffer = gated
    return gate, calls


def _pose(session, stamp_ns, world_from_cam, frame_id='map'):
    return session.add_pose(stamp_ns, world_from_cam, frame_id)


def _pose_between(pose_a, pose_b, alpha):
    return geometry.slerp_pose(pose_a, pose_b, alpha)


# -- pose track ---------------------------------------------------------------------------

def test_pose_track_exact_interpolated_gap_and_wait():
    a = geometry.make_pose(np.eye(3), [0.0, 0.0, 0.0])
    b = geometry.make_pose(geometry.axis_angle_to_matrix([0, 0, np.radians(20)]), [1.0, 0, 0])
    track = PoseTrack(tolerance_ns=50 * MS)
    assert track.lookup(T0).status == 'wait'
    track.add(T0, a)
    track.add(T0 + 40 * MS, b)
    track.add(T0 + 500 * MS, b)
    exact = track.lookup(T0 + 40 * MS)
    assert exact.status == 'ok' and np.allclose(exact.world_from_cam, b)
    mid = track.lookup(T0 + 10 * MS)
    assert mid.status == 'ok'
    assert np.allclose(mid.world_from_cam[:3, 3], [0.25, 0, 0])
    assert geometry.rotation_angle_deg(mid.world_from_cam[:3, :3]) == pytest.approx(5.0)
    gap = track.lookup(T0 + 100 * MS)
    assert gap.status == 'none'
    assert '60.0 ms before' in gap.reason and '400.0 ms after' in gap.reason
    before = track.lookup(T0 - 1)
    assert before.status == 'none' and 'first pose' in before.reason
    assert track.lookup(T0 + 501 * MS).status == 'wait'
    with pytest.raises(ValueError, match='must increase'):
        track.add(T0, a)
    track.forget_before(T0 + 300 * MS)
    assert len(track) == 2  # the pose before the stamp stays: it brackets later stamps
    assert track.lookup(T0 + 300 * MS).status == 'none'


def _unnormalised(norm):
    """The matrix a quaternion of this norm gives when converted without normalising."""
    q = np.array([0.1, 0.2, 0.3, 0.9])
    x, y, z, w = q / np.linalg.norm(q) * np.sqrt(norm)
    return geometry.make_pose(np.array([
        [w * w + x * x - y * y - z * z, 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), w * w - x * x + y * y - z * z, 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), w * w - x * x - y * y + z * z]]), [1, 2, 3])


@pytest.mark.parametrize('pose, match', [
    (np.full((4, 4), np.nan), 'non-finite'),
    (np.eye(3), r'shape \(4, 4\)'),
    (_unnormalised(1.5), 'not a rotation'),
    (_unnormalised(1.0001), 'not a rotation'),
    (np.diag([1.0, 1.0, -1.0, 1.0]), 'det -1'),
    (np.vstack([np.eye(4)[:3], [0, 0, 1, 1]]), 'last row'),
])
def test_rigid_pose_check_refuses_bad_poses(pose, match):
    with pytest.raises(ValueError, match=match):
        check_rigid_pose(pose)


def test_rigid_pose_check_accepts_a_unit_quaternion_pose():
    assert np.allclose(check_rigid_pose(_unnormalised(1.0))[:3, 3], [1, 2, 3])


def test_stamp_names_sort_and_keep_nanoseconds():
    assert stamp_name(T0 + 5) == '1700000000.000000005'
    assert stamp_name(T0 + 999_999_999) < stamp_name(T0 + 1_000_000_000)


# -- session: matching and rejections -----------------------------------------------------

def test_images_and_poses_in_either_order_give_the_same_keyframes(frames, tmp_path):
    train, _ = frames
    sessions = []
    for order in ('poses_first', 'images_first', 'interleaved'):
        (tmp_path / order).mkdir()
        session = _session(tmp_path / order)
        stamps = [T0 + i * PERIOD for i in range(len(train))]
        feed_poses = [lambda s=s, f=f: _pose(session, s, f.world_from_cam)
                      for s, f in zip(stamps, train)]
        feed_images = [lambda s=s, f=f: session.add_image(f.image, f.K, s)
                       for s, f in zip(stamps, train)]
        if order == 'poses_first':
            calls = feed_poses + feed_images
        elif order == 'images_first':
            calls = feed_images + feed_poses
        else:
            calls = [c for pair in zip(feed_images, feed_poses) for c in pair]
        for call in calls:
            call()
        sessions.append(session)
    for session in sessions:
        assert session.wait_encoded(30.0)
        status = session.status()
        assert status.keyframes == len(train), status.counts
        assert status.pending == 0 and status.counts['no_pose'] == 0
        assert session._buffer.n_images == len(train)  # encoded while collecting
        assert status.encoded == len(train) and status.queued == 0
        assert 0 < status.buffer_cells <= len(train) * 40
    names = [[f.name for f in s._keyframes] for s in sessions]
    assert names[0] == names[1] == names[2]


def test_interpolates_between_bracketing_poses_and_refuses_to_guess(frames, tmp_path):
    train, _ = frames
    session = _session(tmp_path, stamp_tolerance_s=0.03, min_translation_m=0.0,
                       min_rotation_deg=0.0)
    a, b, c = (f.world_from_cam for f in train[:3])
    _pose(session, T0, a)
    _pose(session, T0 + 40 * MS, b)
    assert session.add_image(train[0].image, train[0].K, T0 + 20 * MS) == 'keyframe'
    kept = session._keyframes[-1].world_from_cam
    assert np.allclose(kept, _pose_between(a, b, 0.5))
    # 25 ms after b but the next pose is 60 ms later: one side is beyond 30 ms -> no pose.
    assert session.add_image(train[1].image, train[1].K, T0 + 65 * MS) == 'pending'
    _pose(session, T0 + 100 * MS, c)
    status = session.status()
    assert status.counts['no_pose'] == 1 and status.keyframes == 1 and status.pending == 0


def test_images_without_poses_are_counted_after_max_pose_wait(frames, tmp_path, caplog):
    train, _ = frames
    session = _session(tmp_path, max_pose_wait_s=0.25)
    with caplog.at_level(logging.WARNING):
        for i in range(4):
            session.add_image(train[i].image, train[i].K, T0 + i * PERIOD)
    status = session.status()
    # Only image 0 is more than 250 ms older than the newest image: it will never get a
    # pose; the others may still.
    assert status.counts['no_pose'] == 1 and status.pending == 3
    assert 'within max_pose_wait_s' in caplog.text
    with pytest.raises(ValueError, match='at least 2 keyframes, got 0'):
        session.finish()
    assert session.state == 'collecting'  # too early: collection goes on
    assert session.status().counts['no_pose'] == 4  # finishing decided the rest


def test_bad_inputs_are_refused_counted_and_logged(frames, tmp_path, caplog):
    train, _ = frames
    session = _session(tmp_path, min_translation_m=0.0, min_rotation_deg=0.0)
    pose0, pose1 = train[0].world_from_cam, train[1].world_from_cam
    nan_pose = pose0.copy()
    nan_pose[0, 3] = np.nan
    with caplog.at_level(logging.WARNING):
        assert _pose(session, T0, pose0) == 'ok'
        assert _pose(session, T0, pose0) == 'pose_duplicate_stamp'
        assert _pose(session, T0 - MS, pose0) == 'pose_out_of_order'
        assert _pose(session, T0 + MS, nan_pose) == 'pose_invalid'
        assert _pose(session, T0 + MS, _unnormalised(1.5)) == 'pose_invalid'
        assert _pose(session, T0 + MS, pose0, frame_id='odom') == 'pose_wrong_frame'
        assert _pose(session, T0 + PERIOD, pose1) == 'ok'
        assert session.add_image(train[0].image, train[0].K, T0) == 'keyframe'
        assert session.add_image(train[0].image, train[0].K, T0) == 'image_duplicate_stamp'
        assert session.add_image(train[0].image, train[0].K, T0 - MS) == 'image_out_of_order'
        assert session.add_image(train[1].image[..., 0], train[1].K, T0 + MS) == 'image_invalid'
        assert session.add_image(train[1].image, np.zeros((3, 3)), T0 + MS) == 'image_invalid'
        assert session.add_image(train[1].image, train[1].K, 0) == 'image_invalid'
        assert session.add_image(train[1].image, train[1].K, T0 + PERIOD) == 'keyframe'
    counts = session.status().counts
    assert counts['images'] == 7 and counts['poses'] == 7 and counts['keyframes'] == 2
    for reason, n in [('pose_duplicate_stamp', 1), ('pose_out_of_order', 1),
                      ('pose_invalid', 2), ('pose_wrong_frame', 1),
                      ('image_duplicate_stamp', 1), ('image_out_of_order', 1),
                      ('image_invalid', 3)]:
        assert counts[reason] == n, reason
    for text in ('repeats the previous pose stamp', 'older than the previous pose',
                 'non-finite', 'not a rotation', "in frame 'odom', mapping uses 'map'",
                 'repeats the previous image stamp', 'must be (H, W, 3) uint8',
                 'camera_info', 'stamp is 0'):
        assert text in caplog.text, text
    assert session.world_frame_id == 'map'
    assert set(counts) == set(COUNTERS)


def test_keyframes_need_motion_and_finish_at_max_keyframes_stops_there(frames, tmp_path):
    """The policy before thinning, kept as an option: the first max_keyframes, then none."""
    train, _ = frames
    session = _session(tmp_path, min_translation_m=0.3, min_rotation_deg=30.0, max_keyframes=3,
                       finish_at_max_keyframes=True)
    still = train[0].world_from_cam
    nudged = still @ geometry.make_pose(np.eye(3), [0.1, 0, 0])
    turned = still @ geometry.make_pose(geometry.axis_angle_to_matrix([0, np.radians(40), 0]),
                                        [0, 0, 0])
    moved = turned @ geometry.make_pose(np.eye(3), [0.5, 0, 0])
    expected = ['keyframe', 'skipped_small_motion', 'keyframe', 'keyframe', 'keyframe_limit']
    for i, (pose, want) in enumerate(zip([still, nudged, turned, moved, still], expected)):
        _pose(session, T0 + i * PERIOD, pose)
        assert session.add_image(train[i].image, train[i].K, T0 + i * PERIOD) == want
    assert session.full and session.keyframe_count == 3
    counts = session.status().counts
    assert counts['skipped_small_motion'] == 1 and counts['keyframe_limit'] == 1


# -- session: keyframe policy (defaults, thinning) ------------------------------------------

_SMALL_IMAGE = np.zeros((16, 16, 3), np.uint8)
_SMALL_K = np.array([[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]])


def _policy_session(tmp_path, **online):
    """A session with the default keyframe settings (unless overridden) whose encoder does
    nothing: these tests are about which frames are kept, not about the buffer."""
    session = OnlineMappingSession(_cfg(), OnlineMappingConfig(
        map_path=str(tmp_path / 'room.ace'), **{'train_while_collecting': False, **online}),
        write_scene=write_ace_scene)
    _SESSIONS.append(session)
    session._mapper.add_to_buffer = lambda buffer, frame: 0
    return session


def _stream_one(session, i, pose):
    _pose(session, T0 + i * PERIOD, pose)
    return session.add_image(_SMALL_IMAGE, _SMALL_K, T0 + i * PERIOD)


def _stream(session, poses):
    """Feed one pose and one image per stamp; the outcome of each image."""
    return [_stream_one(session, i, pose) for i, pose in enumerate(poses)]


def _unit(v):
    return v / np.linalg.norm(v)


def _slow_drive(n, seed=0, step_m=(0.01, 0.03), turn_deg=0.5):
    """A hand-held camera moving slowly: 1-3 cm and up to half a degree between frames."""
    rng = np.random.default_rng(seed)
    poses, pose = [], np.eye(4)
    heading = np.array([1.0, 0.0, 0.0])
    for _ in range(n):
        poses.append(pose)
        heading = heading + rng.normal(0, 0.2, 3)
        heading /= np.linalg.norm(heading)
        turn = geometry.axis_angle_to_matrix(np.radians(rng.uniform(0, turn_deg))
                                             * _unit(rng.normal(size=3)))
        step = np.eye(4)
        step[:3, 3] = heading * rng.uniform(*step_m)
        pose = step @ pose @ geometry.make_pose(turn, [0, 0, 0])
    return poses


def _candidate(name):
    return round((int(name.replace('.', '')) - T0) / PERIOD)


def test_defaults_keep_nearly_every_frame_of_a_slow_drive(tmp_path):
    """Issue 17 item 8: 5 cm / 5 deg kept 70 of a 500-frame hand-held room and halved the
    map's accuracy. ACE trains on every frame: the defaults keep frames 1-3 cm apart."""
    defaults = OnlineMappingConfig()
    assert (defaults.min_translation_m, defaults.min_rotation_deg) == (0.01, 1.0)
    assert defaults.max_keyframes == 500 and not defaults.finish_at_max_keyframes
    session = _policy_session(tmp_path)
    outcomes = _stream(session, _slow_drive(500))
    assert outcomes.count('keyframe') >= 450, collections.Counter(outcomes)
    assert session.keyframe_count == session.status().counts['keyframes'] >= 450
    assert session.spacing == 1 and session.status().counts['keyframes_thinned'] == 0


def test_a_stationary_camera_gives_few_keyframes(tmp_path):
    """A robot standing still: its pose jitters by a millimetre and a tenth of a degree."""
    rng = np.random.default_rng(3)
    still = geometry.make_pose(np.eye(3), [1.0, 2.0, 0.5])
    poses = [still @ geometry.make_pose(
        geometry.axis_angle_to_matrix(np.radians(0.1) * _unit(rng.normal(size=3))),
        rng.normal(0, 0.001, 3)) for _ in range(300)]
    session = _policy_session(tmp_path)
    outcomes = _stream(session, poses)
    assert session.keyframe_count <= 3, collections.Counter(outcomes)
    assert outcomes.count('skipped_small_motion') >= 297


def test_a_drive_longer_than_max_keyframes_is_thinned_evenly(tmp_path, caplog):
    """Past max_keyframes every second keyframe goes and the spacing doubles: the whole drive
    stays covered at one density, with never more than max_keyframes held."""
    session = _policy_session(tmp_path, max_keyframes=40)
    n = 300
    held = []
    with caplog.at_level(logging.INFO, logger='ace_ros.core.online_mapping'):
        for i, pose in enumerate(_slow_drive(n, seed=1)):
            _stream_one(session, i, pose)
            held.append(session.keyframe_count)
    assert max(held) <= 40
    index = [_candidate(f.name) for f in session._keyframes]
    # 300 frames, 40 at most: thinned at 40, 80 and 160 candidates -> every 8th frame.
    assert session.spacing == 8 and index == list(range(0, n, 8))
    assert 20 <= len(index) <= 40
    assert index[0] == 0 and index[-1] >= n - session.spacing  # both ends of the drive
    assert set(np.diff(index)) == {session.spacing}            # uniform spacing
    counts = session.status().counts
    assert counts['keyframes'] == len(index)
    assert (counts['keyframes'] + counts['keyframes_thinned'] + counts['skipped_spacing']
            + counts['skipped_small_motion']) == n
    assert counts['keyframe_limit'] == 0
    thinned = [r.getMessage() for r in caplog.records if 'thinned the keyframes' in r.getMessage()]
    assert len(thinned) == 3 and '20 of 40 kept' in thinned[0], thinned
    assert 'every 8th frame' in thinned[-1]


def test_thinning_leaves_only_the_kept_keyframes_in_the_buffer(frames, tmp_path):
    """The buffer filled while collecting loses the dropped keyframes' cells: thinning starts
    a fresh buffer and re-encodes the kept ones (a frame being encoded into the old buffer
    meanwhile does not count), and the old buffer is freed."""
    train, _ = frames
    session = _session(tmp_path, cfg=_cfg(max_buffer_passes=2), min_translation_m=0.0,
                       min_rotation_deg=0.0, max_keyframes=4)
    old_buffer = weakref.ref(session._buffer)
    gate, calls = _gate_encoder(session)
    outcomes = []
    for i, frame in enumerate(train):
        _pose(session, T0 + i * PERIOD, frame.world_from_cam)
        outcomes.append(session.add_image(frame.image, frame.K, T0 + i * PERIOD))
        if i == 0:  # frame 0 is still being encoded (into the old buffer) when thinning comes
            deadline = time.monotonic() + 30.0
            while not calls and time.monotonic() < deadline:
                time.sleep(0.01)
    # 10 frames, 4 at most: thinned at frames 4 and 8 -> frames 0, 4, 8.
    kept = [stamp_name(T0 + i * PERIOD) for i in (0, 4, 8)]
    assert [f.name for f in session._keyframes] == kept
    assert outcomes.count('skipped_spacing') == 3 and session.spacing == 4
    gate.set()
    assert session.wait_encoded(30.0)
    status = session.status()
    assert status.encoded == status.keyframes == 3 and status.queued == 0
    assert session._buffer.sources == kept and session._buffer.n_images == 3
    assert status.buffer_cells == session._buffer.size <= 3 * 40
    assert calls[0] == calls[1] == kept[0]  # encoded into the old buffer, then again
    gc.collect()
    assert old_buffer() is None
    result = session.finish()
    assert result.keyframes == 3 and result.stats.buffer_images == 2 * 3
    assert load_map(result.map_path).frame_names == kept
    assert list(AceLayoutSource(result.keyframes_dir).names) == kept


# -- session: finishing ---------------------------------------------------------------------

def _collect(session, train):
    for i, frame in enumerate(train):
        _pose(session, T0 + i * PERIOD, frame.world_from_cam)
        session.add_image(frame.image, frame.K, T0 + i * PERIOD)


@pytest.mark.parametrize('device', ['cpu', pytest.param('cuda', marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason='no CUDA device'))])
def test_finish_saves_keyframes_then_writes_a_usable_map(frames, tmp_path, device,
                                                         monkeypatch):
    train, test = frames
    # The random encoder gives no cloud worth the name: a stand-in shows that the one the
    # mapper predicts reaches the map file.
    cloud = MapCloud(np.arange(6.0).reshape(2, 3), np.full((2, 3), 7, np.uint8))
    monkeypatch.setattr(mapper_module, 'predict_cloud', lambda *a, **k: cloud)
    session = _session(tmp_path, cfg=_cfg(max_buffer_passes=2, device=device))
    assert session.device.type == device and session._buffer.features.device.type == device
    _collect(session, train)
    reports = []
    result = session.finish(progress=reports.append)
    assert session.state == 'done'
    # The first pass was encoded while collecting; finish ran only the second.
    assert result.stats.buffer_images == 2 * len(train)
    buffer_reports = [p for p in reports if p.stage == 'buffer']
    assert [p.total for p in buffer_reports[:1]] == [len(train)]
    train_reports = [p for p in reports if p.stage == 'train']
    assert train_reports[-1].done == train_reports[-1].total == result.stats.iterations == 3
    assert all(np.isfinite(p.loss) and p.rate > 0 and p.eta_s >= 0 for p in train_reports)

    scene_map = load_map(result.map_path)
    assert scene_map.world_frame_id == 'map'
    np.testing.assert_array_equal(scene_map.cloud.points, cloud.points)
    assert result.stats.cloud_points == 2
    assert scene_map.frame_names == [stamp_name(T0 + i * PERIOD) for i in range(len(train))]
    localizer = Localizer.from_file(result.map_path, LocalizationConfig(
        device='cpu', image_height=HEIGHT, min_inliers=4, encoder='random:0',
        ransac_hypotheses=8, ransac_max_tries=200, refinement_iterations=2))
    outcome = localizer.localize(test[0])
    assert outcome.n_cells > 0  # plumbing; the random encoder says nothing about accuracy

    # The recovery copy maps offline exactly as collected.
    saved = AceLayoutSource(result.keyframes_dir)
    assert result.keyframes_dir == str(tmp_path / 'room_keyframes')
    assert list(saved.names) == scene_map.frame_names
    for original, reread in zip(train, saved):
        assert np.array_equal(original.image, reread.image)
        assert np.allclose(original.world_from_cam, reread.world_from_cam, atol=1e-8)
        assert np.allclose(original.K, reread.K)
    with pytest.raises(RuntimeError, match='already started'):
        session.finish()
    assert session.add_image(train[0].image, train[0].K, T0 + 99 * PERIOD) == 'after_finish'


def test_cancelled_training_keeps_keyframes_and_the_previous_map(frames, tmp_path):
    train, _ = frames
    previous = tmp_path / 'room.ace'
    previous.write_bytes(b'the previous map')
    (tmp_path / 'room_keyframes' / 'rgb').mkdir(parents=True)
    (tmp_path / 'room_keyframes' / 'rgb' / 'old.png').write_bytes(b'')
    session = _session(tmp_path, cfg=_cfg(max_iterations=400))
    _collect(session, train)
    cancel = threading.Event()

    def stop_midway(p):
        if p.stage == 'train' and p.done > 1:
            cancel.set()

    with pytest.raises(MappingCancelled, match='during training'):
        session.finish(progress=stop_midway, cancel=cancel)
    assert session.state == 'failed' and 'cancelled' in session.status().error
    assert previous.read_bytes() == b'the previous map'
    # An earlier run's keyframes are not overwritten either.
    assert session.status().keyframes_dir == str(tmp_path / 'room_keyframes.1')
    assert len(AceLayoutSource(tmp_path / 'room_keyframes.1')) == len(train)


def test_save_keyframes_any_time_and_refuses_to_overwrite(frames, tmp_path):
    train, _ = frames
    session = _session(tmp_path)
    with pytest.raises(ValueError, match='no keyframes'):
        write_ace_scene(tmp_path / 'early', session.keyframes())
    _collect(session, train[:4])
    folder = write_ace_scene(tmp_path / 'kf', session.keyframes())
    assert len(AceLayoutSource(folder)) == 4
    with pytest.raises(FileExistsError):
        write_ace_scene(tmp_path / 'kf', session.keyframes())


def test_a_map_path_in_a_missing_folder_is_refused_before_collecting(tmp_path):
    with pytest.raises(ValueError, match='does not exist'):
        _session(tmp_path, map_path=str(tmp_path / 'missing' / 'room.ace'))


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match='max_keyframes must be >= 2'):
        OnlineMappingConfig(max_keyframes=1)
    with pytest.raises(ValueError, match='stamp_tolerance_s must be finite'):
        OnlineMappingConfig(stamp_tolerance_s=float('nan'))
    with pytest.raises(ValueError, match='map_path'):
        OnlineMappingConfig(map_path='')


# -- session: the encoder thread ----------------------------------------------------------

def test_adding_returns_at_once_while_the_worker_encodes(frames, tmp_path):
    """Callbacks never wait for the encoder: keyframes queue while it is busy."""
    train, _ = frames
    session = _session(tmp_path)
    gate, calls = _gate_encoder(session)  # the encoder is "slow": blocked until the gate opens
    start = time.monotonic()
    for i, frame in enumerate(train):
        _pose(session, T0 + i * PERIOD, frame.world_from_cam)
        assert session.add_image(frame.image, frame.K, T0 + i * PERIOD) == 'keyframe'
    assert time.monotonic() - start < 5.0
    status = session.status()
    assert status.keyframes == len(train) and status.encoded == 0
    assert status.queued == len(train) and session.queued_count == len(train)
    assert len(calls) <= 1 and session._buffer.n_images == 0
    assert not session.wait_encoded(timeout_s=0.1)
    gate.set()
    assert session.wait_encoded(timeout_s=30.0)
    status = session.status()
    assert status.encoded == len(train) and status.queued == 0
    assert session._buffer.n_images == len(train)
    assert calls == [f.name for f in session._keyframes]  # in order, each once


def test_finish_waits_for_the_encode_queue(frames, tmp_path):
    train, _ = frames
    session = _session(tmp_path, cfg=_cfg(max_buffer_passes=2))
    gate, _ = _gate_encoder(session)
    _collect(session, train)
    reports, outcome = [], {}
    thread = threading.Thread(target=lambda: outcome.update(
        result=session.finish(progress=reports.append)))
    thread.start()
    time.sleep(1.0)
    assert session.state == 'training' and thread.is_alive()
    assert not (tmp_path / 'room.ace').exists() and not (tmp_path / 'room_keyframes').exists()
    assert any(p.stage == 'keyframes' and p.total == len(train) for p in reports)
    gate.set()
    thread.join(60.0)
    assert not thread.is_alive() and session.state == 'done', session.status().error
    result = outcome['result']
    assert result.keyframes == len(train)
    # Every queued keyframe was encoded (pass 1) before finish ran pass 2.
    assert result.stats.buffer_images == 2 * len(train)
    assert len(AceLayoutSource(result.keyframes_dir)) == len(train)


def test_interrupt_keeps_queued_keyframes_and_close_does_not_hang(frames, tmp_path):
    train, _ = frames
    session = _session(tmp_path)
    gate, _ = _gate_encoder(session)
    _collect(session, train)
    assert session.queued_count == len(train)
    # what Ctrl-C while collecting does
    folder = write_ace_scene(tmp_path / 'kf', session.keyframes())
    assert len(AceLayoutSource(folder)) == len(train)
    start = time.monotonic()
    session.close(timeout_s=0.5)  # the encoder is stuck in a frame: close gives up waiting
    assert time.monotonic() - start < 5.0
    gate.set()
    assert not session.wait_encoded(timeout_s=5.0)  # closed: the rest stays unencoded
    assert session.keyframe_count == len(train)


def test_cancel_while_draining_the_queue(frames, tmp_path):
    train, _ = frames
    session = _session(tmp_path)
    gate, _ = _gate_encoder(session)
    _collect(session, train)
    cancel = threading.Event()
    cancel.set()
    try:
        with pytest.raises(MappingCancelled, match='queued keyframes'):
            session.finish(cancel=cancel)
    finally:
        gate.set()
    assert session.state == 'failed' and not (tmp_path / 'room.ace').exists()
    assert session.keyframe_count == len(train)


def test_a_keyframe_that_fails_to_encode_is_dropped_and_counted(frames, tmp_path, caplog):
    train, _ = frames
    session = _session(tmp_path)
    encode = session._mapper.add_to_buffer

    def flaky(buffer, frame):
        if frame.name == stamp_name(T0 + PERIOD):
            raise RuntimeError('out of memory')
        return encode(buffer, frame)

    session._mapper.add_to_buffer = flaky
    with caplog.at_level(logging.WARNING):
        _collect(session, train[:4])
        assert session.wait_encoded(30.0)
    status = session.status()
    assert status.counts['encode_failed'] == 1 and 'out of memory' in caplog.text
    assert status.keyframes == status.counts['keyframes'] == status.encoded == 3
    assert stamp_name(T0 + PERIOD) not in [f.name for f in session._keyframes]


def test_time_budget_counts_from_finish_queued_keyframes_included(
        frames, tmp_path, monkeypatch, fill_buffer_deadlines):
    """The budget bounds the wait from `finish` to the map (README): a TUM replay at 30 Hz
    left 52 s of queued keyframes, which once came on top of the cpu preset's 540 s."""
    from ace_ros.core import mapper as mapper_module
    from ace_ros.core.mapper import Mapper
    train, _ = frames
    session = _session(tmp_path, cfg=_cfg(time_budget_s=100.0))
    gate, _ = _gate_encoder(session)
    _collect(session, train)
    calls, original_train = [], Mapper.train

    def recording_train(self, buffer, scene_mean, progress=None, time_left_s=None,
                        planned_size=0, trainer=None):
        calls.append((time.perf_counter(), time_left_s))
        return original_train(self, buffer, scene_mean, progress, time_left_s, planned_size,
                              trainer)

    monkeypatch.setattr(Mapper, 'train', recording_train)
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(result=session.finish()))
    started = time.perf_counter()
    thread.start()
    time.sleep(2.0)  # the queued keyframes wait for the encoder this long
    gate.set()
    thread.join(60.0)
    assert not thread.is_alive() and session.state == 'done', session.status().error
    (called, time_left), = calls
    assert called - started > 2.0
    # Counted from finish: what is left is the budget minus everything since, the queue too.
    assert time_left + (called - started) == pytest.approx(100.0, abs=0.3)
    # Encoding the queue is buffer work: it counts towards the buffer's share, not training's.
    share = mapper_module.BUFFER_SHARE_OF_BUDGET
    assert fill_buffer_deadlines[0] - started == pytest.approx(share * 100.0, abs=0.3)


def test_keyframes_encoded_while_collecting_get_triangulated_targets(tmp_path, caplog):
    """With `triangulate`, the cells of the first pass (encoded as keyframes arrived, before
    any point existed) get their targets at finish."""
    scene = SyntheticSceneConfig(seed=1, width=320, height=240, focal=262.5, n_train=12,
                                 n_test=0)
    train = list(generate_frames(scene, 'train'))
    session = _session(tmp_path, cfg=_cfg(image_height=240, samples_per_image=200,
                                          triangulate=True, max_buffer_passes=1))
    _collect(session, train)
    with caplog.at_level(logging.INFO, logger='ace_ros.core.mapper'):
        session.finish()
    assert session.state == 'done'
    attached = [r.getMessage() for r in caplog.records
                if 'already in the buffer got a triangulated target' in r.getMessage()]
    # 152 here: 8 of the 12 frames have points, up to 200 cells each are sampled.
    assert attached and int(attached[0].split()[0]) >= 50, attached


def _wait_for(condition, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, 'timed out waiting'
        time.sleep(0.02)


@pytest.mark.parametrize('max_keyframes', [50, 4])
def test_the_head_trains_while_keyframes_arrive_and_finish_goes_on_with_it(
        frames, tmp_path, caplog, max_keyframes):
    """The worker trains whenever it has nothing to encode (lever 3 of issue 13); finish
    runs the schedule's remainder on that head and the map records both. With 4 keyframes
    the buffer is thinned and replaced while the head trains."""
    caplog.set_level(logging.INFO, logger='ace_ros.core')
    train, _ = frames
    cfg = _cfg(max_iterations=4)
    session = _session(tmp_path, cfg, max_keyframes=max_keyframes, train_while_collecting=True)
    assert session.status().warm_iterations == 0
    _collect(session, train)
    _wait_for(lambda: session.status().warm_iterations >= 5)
    during = session.status()
    # (its median error is nan while no prediction lies in front of the camera: random
    # encoder, 40 cells an image)
    assert during.state == 'collecting'
    _wait_for(lambda: session.status().warm_iterations > during.warm_iterations)
    if max_keyframes == 4:
        assert session.counts['keyframes_thinned'] > 0
    result = session.finish()
    assert result.stats.warm_iterations >= during.warm_iterations
    assert result.stats.warm_s > 0 and result.stats.iterations == 4
    assert 'training goes on from' in caplog.text
    assert load_map(result.map_path).extras['warm_iterations'] == result.stats.warm_iterations


def test_no_training_while_collecting_when_it_is_off(frames, tmp_path):
    train, _ = frames
    session = _session(tmp_path, _cfg(max_iterations=4), train_while_collecting=False)
    _collect(session, train)
    assert session.wait_encoded(timeout_s=30.0)
    time.sleep(0.3)
    assert session.status().warm_iterations == 0
    result = session.finish()
    assert result.stats.warm_iterations == 0 and result.stats.iterations == 4


def test_a_failing_training_step_while_collecting_costs_only_the_warm_start(
        frames, tmp_path, caplog, monkeypatch):
    from ace_ros.core.training import HeadTrainer

    def broken(self, buffer, warmup_steps):
        raise RuntimeError('out of memory')
    monkeypatch.setattr(HeadTrainer, 'warm_step', broken)
    train, _ = frames
    session = _session(tmp_path, _cfg(max_iterations=4), train_while_collecting=True)
    _collect(session, train)
    _wait_for(lambda: 'training while collecting stopped' in caplog.text)
    result = session.finish()
    assert result.stats.warm_iterations == 0 and result.stats.iterations == 4
    assert 'out of memory' in caplog.text
