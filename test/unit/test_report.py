"""Evaluation outputs (ace_ros.report): per-frame CSV, TUM trajectories, PNG plots, and the
CLI's `evaluate --out`, `localize --pose-format` and `info --plot`."""

from __future__ import annotations

import csv
import math
import subprocess
import sys

import cv2
import numpy as np
import pytest

from ace_ros import cli, report
from ace_ros.core import geometry
from ace_ros.core.types import Frame, LocalizationResult
from ace_ros.data.sources import open_source
from ace_ros.data.synthetic import SyntheticSceneConfig, write_synthetic_scene

HEIGHT, WIDTH = 120, 160


def _pose(rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    return geometry.make_pose(geometry.axis_angle_to_matrix(rng.normal(size=3) * scale),
                              rng.normal(size=3) * 2.0)


def _records(n: int = 12, failed=(3, 7), stamps: bool = True) -> list:
    """`n` scored frames on a circle; the estimates are the ground truth moved by a known
    offset growing with the index, except frames `failed`."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        angle = 2 * math.pi * i / n
        gt = geometry.make_pose(geometry.axis_angle_to_matrix([0.0, angle, 0.0]),
                                [2.0 * math.cos(angle), 1.5, 2.0 * math.sin(angle)])
        success = i not in failed
        est = gt.copy()
        est[:3, 3] += [0.0095 * i, 0.0, 0.0]
        est[:3, :3] = geometry.axis_angle_to_matrix([0.0, 0.0, math.radians(0.5 * i)]) @ \
            est[:3, :3]
        frame = Frame(name=f'frame-{i:03d}', image=np.zeros((4, 4, 3), np.uint8),
                      K=np.eye(3), world_from_cam=gt,
                      stamp=1305031102.175304 + 0.1 * i if stamps else 0.0)
        result = LocalizationResult(
            success=success, world_from_cam=est if success else np.eye(4),
            inlier_count=int(rng.integers(20, 900)) if success else 3, n_cells=300,
            confidence=0.5 + 0.01 * i if success else 0.0,
            timings_ms={'prepare': 1.0, 'encoder': 10.0, 'head': 2.0, 'ransac': 5.0,
                        'total': 18.0 + i})
        records.append(report.evaluate_frame(i, frame, result))
    return records


def _assert_real_png(path, min_colours: int = 8) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, f'{path} is not a readable image'
    assert image.shape[0] >= 200 and image.shape[1] >= 200
    colours = np.unique(image.reshape(-1, 3), axis=0)
    assert len(colours) >= min_colours, f'{path}: only {len(colours)} colours'
    return image


def test_evaluate_frame_scores_against_ground_truth():
    records = _records()
    assert [r.success for r in records].count(False) == 2
    assert math.isinf(records[3].t_error_m) and math.isinf(records[7].r_error_deg)
    assert records[5].t_error_m == pytest.approx(0.0475)
    assert records[5].r_error_deg == pytest.approx(2.5)
    assert records[5].ms == 23.0
    summary = report.summarize(records)
    assert summary['n_frames'] == 12 and summary['n_failed'] == 2
    # Frames 0..5 are within 5 cm (i * 0.95 cm), 3 failed: 0, 1, 2, 4, 5.
    assert summary['pct_5cm_5deg'] == pytest.approx(100 * 5 / 12)
    with pytest.raises(ValueError, match='no ground-truth pose'):
        report.evaluate_frame(0, Frame('q', np.zeros((4, 4, 3), np.uint8), np.eye(3)),
                              LocalizationResult(False, np.eye(4), 0, 0, 0.0, {}))


def test_frames_csv_has_the_columns_and_values(tmp_path):
    records = _records()
    path = tmp_path / 'frames.csv'
    report.write_frames_csv(path, records)
    with open(path, newline='') as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0].keys()) == report.CSV_COLUMNS == (
        'name', 'timestamp', 'success', 't_error_m', 'r_error_deg', 'inliers', 'confidence',
        'ms')
    assert len(rows) == len(records)
    for row, r in zip(rows, records):
        assert row['name'] == r.name
        assert float(row['timestamp']) == pytest.approx(r.stamp, abs=1e-6)
        assert int(row['success']) == r.success
        assert int(row['inliers']) == r.inliers
        assert float(row['confidence']) == pytest.approx(r.confidence, abs=1e-4)
        assert float(row['ms']) == pytest.approx(r.ms, abs=0.01)
        if r.success:
            assert float(row['t_error_m']) == pytest.approx(0.0095 * r.index, abs=1e-6)
            assert float(row['r_error_deg']) == pytest.approx(0.5 * r.index, abs=1e-3)
        else:
            assert math.isinf(float(row['t_error_m'])) and math.isinf(float(row['r_error_deg']))


def test_tum_timestamps_fall_back_to_indices_without_stamps():
    assert report.tum_timestamps([10.5, 10.6], [4, 5]) == [10.5, 10.6]
    assert report.tum_timestamps([0.0, 0.0], [4, 5]) == [4.0, 5.0]
    assert report.tum_timestamps([3.0, 3.0], [0, 1]) == [0.0, 1.0]  # not distinct


@pytest.mark.parametrize('stamps', [True, False])
def test_tum_files_round_trip(tmp_path, stamps):
    records = _records(stamps=stamps)
    paths = report.write_evaluation(tmp_path / 'out', records)
    assert [p.name for p in paths] == list(report.EVALUATION_FILES)
    est = report.read_tum(tmp_path / 'out' / 'est.txt')
    gt = report.read_tum(tmp_path / 'out' / 'gt.txt')
    assert len(gt) == 12 and len(est) == 10  # failed frames have no estimate
    ok = [r for r in records if r.success]
    for pose, r in zip(est, ok):
        assert pose.stamp == pytest.approx(r.stamp if stamps else r.index, abs=1e-6)
        np.testing.assert_allclose(pose.world_from_cam, r.world_from_cam, atol=1e-6)
    for pose, r in zip(gt, records):
        assert pose.stamp == pytest.approx(r.stamp if stamps else r.index, abs=1e-6)
        np.testing.assert_allclose(pose.world_from_cam, r.world_from_cam_gt, atol=1e-6)
    # Eight columns in TUM's order: timestamp tx ty tz qx qy qz qw.
    line = (tmp_path / 'out' / 'gt.txt').read_text().splitlines()[1].split()
    t, q = geometry.pose_to_translation_quaternion(records[0].world_from_cam_gt)
    np.testing.assert_allclose([float(v) for v in line[1:]], np.r_[t, q], atol=1e-6)


def test_read_tum_rejects_a_malformed_line(tmp_path):
    path = tmp_path / 'bad.txt'
    path.write_text('# header\n0 1 2 3 0 0 0 1\n1 2 3\n')
    with pytest.raises(ValueError, match='bad.txt:3: expected 8 numbers'):
        report.read_tum(path)


def test_random_poses_round_trip_through_tum(tmp_path):
    rng = np.random.default_rng(1)
    poses = [report.StampedPose(float(i) * 0.5, _pose(rng, 2.0)) for i in range(20)]
    report.write_tum(tmp_path / 't.txt', poses)
    back = report.read_tum(tmp_path / 't.txt')
    for a, b in zip(poses, back):
        assert a.stamp == b.stamp
        np.testing.assert_allclose(a.world_from_cam, b.world_from_cam, atol=1e-6)


def test_plots_are_real_images(tmp_path):
    records = _records(40, failed=(5, 6, 30))
    report.write_evaluation(tmp_path, records)
    images = {name: _assert_real_png(tmp_path / name)
              for name in ('trajectory.png', 'error_cdf.png', 'errors.png')}
    # The failure crosses are pure red; the viridis points are neither grey nor red.
    traj = images['trajectory.png']
    red = (traj[:, :, 2] > 200) & (traj[:, :, 1] < 60) & (traj[:, :, 0] < 60)
    assert red.sum() > 20
    assert len({tuple(c) for c in traj.reshape(-1, 3)}) > 50  # a colour map, not a few lines


def test_plots_handle_every_frame_failing(tmp_path):
    records = _records(6, failed=tuple(range(6)))
    report.write_evaluation(tmp_path, records)
    for name in ('trajectory.png', 'error_cdf.png', 'errors.png'):
        _assert_real_png(tmp_path / name)
    assert report.read_tum(tmp_path / 'est.txt') == []


def test_ace_pose_file_header_names_only_written_columns(tmp_path):
    records = _records(4, failed=(1,))
    frames = [report.LocalizedFrame(r.index, r.name, r.stamp, LocalizationResult(
        r.success, r.world_from_cam, r.inliers, 100, r.confidence, r.timings_ms))
        for r in records]
    report.write_pose_file(tmp_path / 'p.txt', frames, 'ace')
    header, *lines = (tmp_path / 'p.txt').read_text().splitlines()
    columns = header.lstrip('# ').split(' (')[0].split()
    assert columns == ['name', 'qw', 'qx', 'qy', 'qz', 'tx', 'ty', 'tz', 'inliers',
                       'confidence']
    assert 'success' not in header
    assert all(len(line.split()) == len(columns) for line in lines)
    assert lines[1].split()[1:5] == ['1.00000000', '0.00000000', '0.00000000', '0.00000000']
    assert float(lines[1].split()[-1]) == 0.0 and float(lines[2].split()[-1]) > 0.0
    report.write_pose_file(tmp_path / 'p.tum', frames, 'tum')
    assert [p.stamp for p in report.read_tum(tmp_path / 'p.tum')] == pytest.approx(
        [r.stamp for r in records if r.success])
    with pytest.raises(ValueError, match='pose format'):
        report.write_pose_file(tmp_path / 'p.x', frames, 'kitti')


def test_plot_map_draws_the_scene_mean(tmp_path):
    report.plot_map(tmp_path / 'map.png', np.array([1.0, -0.5, 2.0]), 16, 'map', 'room.ace')
    _assert_real_png(tmp_path / 'map.png')


def test_importing_report_does_not_import_matplotlib():
    code = ('import sys, ace_ros.report, ace_ros.cli; '
            'sys.exit(int("matplotlib" in sys.modules))')
    assert subprocess.run([sys.executable, '-c', code]).returncode == 0


@pytest.fixture(scope='module')
def mapped_scene(tmp_path_factory):
    root = tmp_path_factory.mktemp('report_scene')
    scene = write_synthetic_scene(root / 'room', SyntheticSceneConfig(
        seed=1, width=WIDTH, height=HEIGHT, focal=525 * HEIGHT / 480, n_train=8, n_test=4,
        texel_size=0.01))
    map_path = root / 'room.ace'
    assert cli.main(['map', str(scene), '--split', 'train', '-o', str(map_path), '--preset',
                     'tiny', '--image-height', str(HEIGHT), '--max-iterations', '5',
                     '--device', 'cpu', '--encoder', 'random:0']) == 0
    return scene, map_path


# A 5-iteration map localizes nothing with 50 inliers required; 4 lets (poor) poses through,
# so that est.txt has lines to check.
LOC_FLAGS = ['--image-height', str(HEIGHT), '--device', 'cpu', '--encoder', 'random:0',
             '--min-inliers', '4']


def test_cli_evaluate_out_localize_tum_and_info_plot(mapped_scene, tmp_path, capsys):
    scene, map_path = mapped_scene
    out, json_path = tmp_path / 'eval', tmp_path / 'eval.json'
    assert cli.main(['evaluate', str(map_path), str(scene), '--split', 'test', '--json',
                     str(json_path), '--out', str(out), *LOC_FLAGS]) == 0
    assert '5cm / 5deg' in capsys.readouterr().out
    assert json_path.exists() and (out / 'summary.json').read_text() == json_path.read_text()
    with open(out / 'frames.csv', newline='') as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and tuple(rows[0]) == report.CSV_COLUMNS
    truth = list(open_source(str(scene), split='test'))
    assert [r['name'] for r in rows] == [f.name for f in truth]
    gt = report.read_tum(out / 'gt.txt')
    assert len(gt) == 4
    for pose, frame in zip(gt, truth):
        np.testing.assert_allclose(pose.world_from_cam, frame.world_from_cam, atol=1e-5)
    ok = [(row, frame) for row, frame in zip(rows, truth) if row['success'] == '1']
    est = report.read_tum(out / 'est.txt')
    assert len(est) == len(ok) > 0
    for pose, (row, frame) in zip(est, ok):
        assert pose.stamp == float(row['timestamp'])
        t_err, r_err = geometry.pose_error(pose.world_from_cam, frame.world_from_cam)
        assert float(row['t_error_m']) == pytest.approx(t_err, abs=1e-5)
        assert float(row['r_error_deg']) == pytest.approx(r_err, abs=1e-2)
    for name in ('trajectory.png', 'error_cdf.png', 'errors.png'):
        _assert_real_png(out / name)

    tum = tmp_path / 'poses.tum'
    assert cli.main(['localize', str(map_path), str(scene), '--split', 'test', '-o', str(tum),
                     '--pose-format', 'tum', *LOC_FLAGS]) == 0
    localized = report.read_tum(tum)  # the same seed finds the same poses
    assert [p.stamp for p in localized] == [p.stamp for p in est]
    for a, b in zip(localized, est):
        np.testing.assert_allclose(a.world_from_cam, b.world_from_cam, atol=1e-5)

    png = tmp_path / 'map.png'
    assert cli.main(['info', str(map_path), '--plot', str(png)]) == 0
    assert 'encoder_sha256' in capsys.readouterr().out
    _assert_real_png(png)
