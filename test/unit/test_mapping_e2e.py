"""End-to-end mapping and localization on a generated synthetic room (no outside data)."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pytest
import torch

from ace_ros import cli
from ace_ros.core import geometry
from ace_ros.core.buffer import EncoderInput, TrainingBuffer, encode, prepare_image
from ace_ros.core.config import PRESETS, LocalizationConfig, mapping_config
from ace_ros.core.localizer import Localizer, pose_errors
from ace_ros.core.mapfile import load_map
from ace_ros.core.mapper import Mapper, map_frames
from ace_ros.core.map_cloud import predict_cloud
from ace_ros.core.loss import soft_clamp_tau
from ace_ros.core.network import Head, HeadConfig, cell_centers
from ace_ros.core.runtime import Runtime
from ace_ros.core.training import HeadTrainer, steps_before_annealing
from ace_ros.core.weights import build_encoder
from ace_ros.data.synthetic import (SyntheticSceneConfig, generate_frames,
                                    generate_frames_with_depth, write_synthetic_scene)

HEIGHT, WIDTH = 120, 160


def _oracle_buffer(n_frames: int, targets_every: int = 0) -> tuple:
    """A buffer whose 'features' are Fourier features of each cell's true 3D point.

    Features that identify the point perfectly isolate the trainer (loss, schedule,
    buffer geometry, augmentation-free) from the encoder: the head must then fit the
    training views to a few pixels. With `targets_every` = k, every k-th cell also gets its
    true point as a target (as triangulation would give it).
    """
    scene = SyntheticSceneConfig(seed=3, width=WIDTH, height=HEIGHT, focal=525 * HEIGHT / 480,
                                 n_train=n_frames, n_test=0, texel_size=0.01)
    projection = torch.randn(3, 256, generator=torch.Generator().manual_seed(0)) * 2.0
    buffer = TrainingBuffer(n_frames * 300, torch.device('cpu'))
    generator = torch.Generator().manual_seed(0)
    centers = cell_centers(HEIGHT, WIDTH).reshape(2, -1).T.numpy().astype(np.float64)
    positions = []
    for frame, depth in generate_frames_with_depth(scene, 'train'):
        prepared = prepare_image(frame, HEIGHT)
        u = np.clip(np.round(centers[:, 0]).astype(int), 0, WIDTH - 1)
        v = np.clip(np.round(centers[:, 1]).astype(int), 0, HEIGHT - 1)
        rays = (np.linalg.inv(prepared.K) @ np.c_[centers, np.ones(len(centers))].T).T
        world = geometry.transform_points(frame.world_from_cam, rays * depth[v, u, None])
        angles = torch.tensor(world, dtype=torch.float32) @ projection
        features = torch.cat([angles.sin(), angles.cos()], 1).T.reshape(
            512, HEIGHT // 8, WIDTH // 8)
        start = buffer.size
        buffer.add_image(prepared, features, 300, generator)
        if targets_every:
            cells = ((buffer.pixels[start:buffer.size] - 3.5) / 8).round().long()
            index = (cells[:, 1] * (WIDTH // 8) + cells[:, 0]).numpy()
            chosen = np.arange(start, buffer.size)[::targets_every]
            buffer.targets[chosen] = torch.tensor(
                world[index[chosen - start]], dtype=torch.float32)
        positions.append(frame.world_from_cam[:3, 3])
    return buffer, np.mean(positions, axis=0)


def test_trainer_fits_training_views_with_informative_features():
    buffer, scene_mean = _oracle_buffer(12)
    # 150 x 512 cells reach ~0.7 px here (250 x 1024: 0.4 px).
    cfg = mapping_config('tiny', image_height=HEIGHT, batch_size=512, max_iterations=150,
                         epochs=100.0)
    run = Mapper(cfg, Runtime(torch.device('cpu'))).train(buffer, scene_mean)
    iterations, history, last = run.iterations, run.loss_history, run.last
    assert iterations == 150
    assert last.valid_fraction > 0.99
    assert last.median_error_px < 3.0, f'median training error {last.median_error_px:.1f} px'
    assert history[-1] < 0.5 * history[0]
    # The map cloud of that head: most cells reproject within 5 px (no frames named in this
    # buffer, so the points are grey).
    cloud = predict_cloud(run.head, buffer, [])
    assert len(cloud) > 0.7 * buffer.size


def test_a_failing_map_cloud_costs_the_cloud_not_the_map(caplog):
    class Broken(Head):
        def forward(self, *args, **kwargs):
            raise RuntimeError('boom')
    buffer, _ = _oracle_buffer(2)
    mapper = Mapper(mapping_config('tiny'), Runtime(torch.device('cpu')))
    assert mapper._cloud([Broken(HeadConfig())], [buffer], []) is None
    assert 'the map gets no cloud' in caplog.text and 'boom' in caplog.text


def test_targets_make_the_head_converge_in_fewer_iterations():
    """The oracle buffer (features that identify each cell's 3D point), a quarter of its
    cells given their true point as a target: after the same short schedule the head fits
    the training views far better with the targets than with reprojection alone."""
    cfg = mapping_config('tiny', image_height=HEIGHT, batch_size=512, max_iterations=40,
                         epochs=100.0)
    errors = {}
    for every in (0, 4):
        buffer, scene_mean = _oracle_buffer(12, targets_every=every)
        assert int((~torch.isnan(buffer.targets[:, 0])).sum()) == (
            0 if not every else len(range(0, 300, every)) * 12)
        last = Mapper(cfg, Runtime(torch.device('cpu'))).train(buffer, scene_mean).last
        errors[every] = last.median_error_px
    assert errors[4] < 0.5 * errors[0], errors


@pytest.fixture(scope='module')
def tiny_scene(tmp_path_factory):
    root = tmp_path_factory.mktemp('scene')
    cfg = SyntheticSceneConfig(seed=1, width=WIDTH, height=HEIGHT, focal=525 * HEIGHT / 480,
                               n_train=16, n_test=4, texel_size=0.01)
    return write_synthetic_scene(root / 'room', cfg)


def test_cli_map_localize_evaluate_round_trip(tiny_scene, tmp_path, capsys):
    map_path, report_path = tmp_path / 'room.ace', tmp_path / 'report.json'
    flags = ['--preset', 'tiny', '--image-height', str(HEIGHT), '--max-iterations', '20',
             '--device', 'cpu', '--encoder', 'random:0']
    assert cli.main(['map', str(tiny_scene), '--split', 'train', '-o', str(map_path),
                     '--report', str(report_path), *flags]) == 0
    report = json.loads(report_path.read_text())
    for key in ('wall_s', 'buffer_s', 'train_s', 'iterations', 'buffer_size', 'map_bytes',
                'device'):
        assert key in report
    assert report['iterations'] == 20 and report['frames_used'] == 16
    assert report['cloud_s'] < 5.0
    assert report['map_bytes'] == map_path.stat().st_size < 4.5e6
    scene_map = load_map(str(map_path))
    assert len(scene_map.frame_names) == 16 and scene_map.mapping_config['preset'] == 'tiny'
    assert report['cloud_points'] == (len(scene_map.cloud) if scene_map.cloud else 0)

    poses_path = tmp_path / 'poses.txt'
    loc_flags = ['--image-height', str(HEIGHT), '--device', 'cpu', '--encoder', 'random:0']
    assert cli.main(['localize', str(map_path), str(tiny_scene), '--split', 'test', '-o',
                     str(poses_path), *loc_flags]) == 0
    lines = [ln for ln in poses_path.read_text().splitlines() if not ln.startswith('#')]
    assert len(lines) == 4
    for line in lines:
        fields = line.split()
        assert len(fields) == 10
        quat = np.array([float(v) for v in fields[1:5]])
        assert abs(np.linalg.norm(quat) - 1) < 1e-6

    json_path = tmp_path / 'eval.json'
    assert cli.main(['evaluate', str(map_path), str(tiny_scene), '--split', 'test', '--json',
                     str(json_path), *loc_flags]) == 0
    summary = json.loads(json_path.read_text())
    assert summary['n_frames'] == 4
    for key in ('n_failed', 'pct_10cm_5deg', 'pct_5cm_5deg', 'pct_2cm_2deg', 'median_t_cm',
                'median_r_deg', 'ms_per_frame', 'encoder_ms', 'head_ms', 'ransac_ms'):
        assert key in summary
    assert summary['encoder_ms'] > 0 and summary['ms_per_frame'] >= summary['encoder_ms']
    assert '5cm / 5deg' in capsys.readouterr().out

    assert cli.main(['info', str(map_path)]) == 0
    assert 'encoder_sha256' in capsys.readouterr().out


def test_localizer_refuses_a_map_from_another_encoder(tiny_scene, tmp_path):
    map_path = tmp_path / 'room.ace'
    assert cli.main(['map', str(tiny_scene), '--split', 'train', '-o', str(map_path),
                     '--preset', 'tiny', '--image-height', str(HEIGHT), '--max-iterations',
                     '2', '--encoder', 'random:0']) == 0
    encoder, sha, _ = build_encoder('random:1', torch.device('cpu'))
    with pytest.raises(ValueError, match='built with encoder'):
        Localizer(load_map(str(map_path)), LocalizationConfig(device='cpu'),
                  Runtime(torch.device('cpu'), encoder, sha))
    # The CLI turns it into a clear error and exit code 2, not a traceback.
    assert cli.main(['evaluate', str(map_path), str(tiny_scene), '--split', 'test',
                     '--encoder', 'random:1']) == 2


def test_cli_reports_bad_input_clearly(tmp_path, caplog):
    assert cli.main(['map', str(tmp_path / 'nowhere'), '-o', str(tmp_path / 'x.ace')]) == 2
    (tmp_path / 'broken.ace').write_bytes(b'not a map')
    assert cli.main(['info', str(tmp_path / 'broken.ace')]) == 2
    assert 'broken.ace' in caplog.text
    assert not (tmp_path / 'x.ace').exists()


def test_demo_runs_end_to_end_with_the_shipped_encoder(tmp_path, monkeypatch, capsys,
                                                       caplog):
    # The README's main job, shrunk: 8 mapping and 3 query frames, 20 iterations.
    monkeypatch.setitem(PRESETS, 'tiny', {**PRESETS['tiny'], 'max_iterations': 20})
    out = tmp_path / 'demo.json'
    assert cli.main(['demo', '--frames', '8', '--queries', '3', '--preset', 'tiny',
                     '--device', 'cpu', '--workdir', str(tmp_path), '--json', str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary['n_frames'] == 3 and summary['mapping_iterations'] == 20
    assert 0 < summary['mapping_map_bytes'] < 4.5e6
    assert len(load_map(str(tmp_path / 'room.ace')).frame_names) == 8
    assert 'ace_ros demo: mapped 8 frames' in capsys.readouterr().out
    # Again into the same folder: a clear refusal, not a traceback, and the map is kept.
    assert cli.main(['demo', '--frames', '8', '--queries', '3', '--preset', 'tiny',
                     '--device', 'cpu', '--workdir', str(tmp_path)]) == 2
    assert 'already holds files' in caplog.text
    assert len(load_map(str(tmp_path / 'room.ace')).frame_names) == 8


def test_time_budget_compresses_the_schedule(monkeypatch, caplog):
    buffer, scene_mean = _oracle_buffer(2)
    cfg = mapping_config('tiny', image_height=HEIGHT, batch_size=256, max_iterations=400,
                         epochs=1000.0)
    mapper = Mapper(cfg, Runtime(torch.device('cpu')))
    head = torch.nn.Module()
    assert mapper.budgeted_iterations(head, buffer, None) == 400  # no budget: the schedule
    monkeypatch.setattr(Mapper, '_step_seconds', lambda self, head, buffer, batch: 0.1)
    assert mapper.budgeted_iterations(head, buffer, 1000.0) == 400  # the schedule fits
    assert mapper.budgeted_iterations(head, buffer, 23.1) == 200  # 23.1 s / (1.15 x 0.1 s)
    assert mapper.budgeted_iterations(head, buffer, 2.0) == 100  # a floor, with a warning
    assert 'time budget leaves 2 s' in caplog.text


def test_time_budget_is_measured_on_real_training_steps():
    buffer, scene_mean = _oracle_buffer(2)
    cfg = mapping_config('tiny', image_height=HEIGHT, batch_size=256, max_iterations=1000,
                         epochs=1000.0)
    mapper = Mapper(cfg, Runtime(torch.device('cpu')))
    head = Head(HeadConfig()).train()
    step_s = mapper._step_seconds(head, buffer, 256)
    assert 0 < step_s < 5
    assert all(p.grad is None for p in head.parameters())  # the probe leaves no gradients
    # Only the far ends: a ratio of two timings is noise on a loaded 2-core machine (CI saw
    # 405 iterations where 150 were planned); the arithmetic has its own test above.
    assert mapper.budgeted_iterations(head, buffer, 1e6) == 1000  # the schedule fits
    assert mapper.budgeted_iterations(head, buffer, 1e-3) == 100  # the floor
    with pytest.raises(ValueError, match='time_budget_s'):
        mapping_config('cpu', time_budget_s=-1.0)
    assert mapping_config('cpu').time_budget_s > 0 and mapping_config().time_budget_s == 0


def test_time_budget_stops_encoding_at_its_deadline():
    scene = SyntheticSceneConfig(seed=4, width=WIDTH, height=HEIGHT, focal=525 * HEIGHT / 480,
                                 n_train=4, n_test=0, texel_size=0.01)
    frames = [frame for frame, _ in generate_frames_with_depth(scene, 'train')]
    encoder, _, _ = build_encoder('random:0', torch.device('cpu'))
    cfg = mapping_config('tiny', image_height=HEIGHT, max_buffer_passes=3, device='cpu')
    full = Mapper(cfg, Runtime(torch.device('cpu'), encoder)).fill_buffer(frames)
    assert full.n_images == 12 and not full.full  # 3 passes over 4 frames
    cut = Mapper(cfg, Runtime(torch.device('cpu'), encoder)).fill_buffer(frames, deadline=0.0)
    assert cut.n_images == 2 and 0 < cut.size < full.size  # past the deadline: 2 images


def test_time_budget_cuts_encoding_not_the_schedule(monkeypatch):
    """The time a budget's early encoding stop saves goes to training: the schedule is that
    of the buffer encoding would have filled (session 5, TUM split on 2 AVX2 cores: 16 epochs
    of the cut buffer ended training 65 s before the budget)."""
    scene = SyntheticSceneConfig(seed=4, width=WIDTH, height=HEIGHT, focal=525 * HEIGHT / 480,
                                 n_train=4, n_test=0, texel_size=0.01)
    frames = [frame for frame, _ in generate_frames_with_depth(scene, 'train')]
    encoder, _, _ = build_encoder('random:0', torch.device('cpu'))
    cfg = mapping_config('tiny', image_height=HEIGHT, max_buffer_passes=3, device='cpu',
                         batch_size=256, epochs=6.0, time_budget_s=1000.0)
    monkeypatch.setattr('ace_ros.core.mapper.BUFFER_SHARE_OF_BUDGET', 0.0)  # cut at 2 images
    monkeypatch.setattr(Mapper, '_step_seconds', lambda self, head, buffer, batch: 1e-3)
    mapper = Mapper(cfg, Runtime(torch.device('cpu'), encoder))
    stats = mapper.map(frames).stats
    assert stats.buffer_images == 2
    planned = 4 * 3 * cfg.samples_per_image  # 3 passes over 4 frames
    assert mapper.iterations_for(stats.buffer_size) < 30 < stats.iterations
    assert stats.iterations == mapper.iterations_for(planned)


def test_time_budget_shares_out_what_building_the_int8_encoder_leaves(
        monkeypatch, fill_buffer_deadlines):
    """Quantizing a new encoder takes ~25 s once, then it is cached. Done at the first image,
    it cost a new encoder's first TUM map 89 of 379 buffer images (session 8); now the
    budget still bounds the wall time, and the buffer gets its share of what is left."""
    from ace_ros.core import mapper as mapper_module, openvino_backend
    built = []

    class SlowInt8Encoder:
        def __init__(self, encoder, encoder_id, calibration=None):
            self.encoder = encoder
            time.sleep(1.0)
            built.append(time.perf_counter())

        def __call__(self, gray):
            return encode(self.encoder, gray, torch.device('cpu'), False)

    monkeypatch.setattr(openvino_backend, 'Int8Encoder', SlowInt8Encoder)
    scene = SyntheticSceneConfig(seed=4, width=WIDTH, height=HEIGHT, focal=525 * HEIGHT / 480,
                                 n_train=3, n_test=0, texel_size=0.01)
    frames = [frame for frame, _ in generate_frames_with_depth(scene, 'train')]
    encoder, _, _ = build_encoder('random:0', torch.device('cpu'))
    cfg = mapping_config('tiny', image_height=HEIGHT, device='cpu', encoder_precision='int8',
                         max_iterations=2, time_budget_s=100.0)
    Mapper(cfg, Runtime(torch.device('cpu'), encoder)).map(frames)
    assert len(built) == 1
    share = mapper_module.BUFFER_SHARE_OF_BUDGET
    # Counted from the end of the build: share x (100 - 1) s; from before it: share x 100 - 1.
    deadline = fill_buffer_deadlines[0]
    assert deadline - built[0] == pytest.approx(share * (cfg.time_budget_s - 1.0), abs=0.2)


def test_time_budget_refits_the_count_to_the_real_rate(monkeypatch, caplog):
    refit = Mapper._refit_iterations
    assert refit(200, 40, 0.1, 10.0, 400) == 140  # slower than planned: fewer
    assert refit(200, 40, 0.1, 16.2, 400) == 200  # within 3 %: unchanged
    assert refit(200, 40, 0.1, 100.0, 400) == 400  # never beyond the schedule
    assert refit(200, 40, 0.1, -5.0, 400) == 100  # out of time: the budget's floor
    assert refit(60, 50, 0.1, -5.0, 400) == 60  # a count under the floor stays
    assert refit(300, 150, 0.1, -5.0, 400) == 151  # past the floor: end after this step
    buffer, scene_mean = _oracle_buffer(2)
    caplog.set_level(logging.INFO, logger='ace_ros.core.mapper')
    cfg = mapping_config('tiny', image_height=HEIGHT, batch_size=64, max_iterations=1000,
                         epochs=1e5)
    mapper = Mapper(cfg, Runtime(torch.device('cpu')))
    # A probe that saw a burst of speed plans the whole schedule (1000 iterations: several
    # seconds); the real steps are slower.
    monkeypatch.setattr(Mapper, '_step_seconds', lambda self, head, buffer, batch: 1e-5)
    schedules = []
    original = torch.optim.lr_scheduler.OneCycleLR
    monkeypatch.setattr(torch.optim.lr_scheduler, 'OneCycleLR',
                        lambda *a, **k: schedules.append(original(*a, **k)) or schedules[-1])
    iterations = mapper.train(buffer, scene_mean, time_left_s=0.5).iterations
    assert 50 < iterations < 1000 and 'iterations instead of 1000' in caplog.text
    # The OneCycle schedule was rebuilt for the new length (again at later checks where the
    # rate drifted by more than 3 %) and ran to its end.
    assert len(schedules) >= 2 and schedules[-1].total_steps == iterations
    assert schedules[-1].last_epoch == iterations
    assert schedules[-1].get_last_lr()[0] < 1e-3 * cfg.learning_rate


def test_a_map_records_the_resolved_encoder_precision():
    from ace_ros.core.mapper import MappingStats, TrainedHead, scene_map_from
    trained = TrainedHead(Head(HeadConfig()), MappingStats(final_loss=1.0), ['a'],
                          [np.eye(3).tolist()])
    with pytest.raises(ValueError, match="not 'auto': pass Mapper.cfg"):
        scene_map_from(trained, mapping_config('cpu'), '0' * 64, 'label', 'map')
    cfg = Mapper(mapping_config('tiny'), Runtime(torch.device('cpu'))).cfg
    scene_map = scene_map_from(trained, cfg, '0' * 64, 'label', 'map')
    assert scene_map.mapping_config['encoder_precision'] == 'float'


def test_a_synthetic_room_maps_and_localizes_to_a_stated_accuracy():
    """The whole engine with the shipped encoder, CI-sized: 40 mapping frames of 320x240,
    300 iterations (~2.5 min on 2 cores). Stated accuracy: at least 6 of 10 query frames
    within 10 cm / 5 deg and a median under 10 cm, with the float head and with the int8 one
    (measured on 2 AVX2 cores: 7 and 8, medians 4.5 and 4.8 cm; with 500 iterations 8 and 8)."""
    scene = SyntheticSceneConfig(seed=5, width=320, height=240, focal=262.5, n_train=40,
                                 n_test=10, path_fraction=0.3, texel_size=0.008)
    cfg = mapping_config('tiny', image_height=240, device='cpu', max_buffer_passes=3,
                         samples_per_image=1024, epochs=1000.0, max_iterations=300)
    mapped = map_frames(list(generate_frames(scene, 'train')), cfg)
    scene_map, stats = mapped.scene_map, mapped.stats
    assert stats.iterations == 300
    queries = list(generate_frames(scene, 'test'))
    for head_precision in ('float', 'int8'):
        localizer = Localizer(scene_map, LocalizationConfig(
            device='cpu', image_height=240, head_precision=head_precision))
        errors = np.array([pose_errors(localizer.localize(frame), frame.world_from_cam)
                           for frame in queries])
        within = (errors[:, 0] < 0.10) & (errors[:, 1] < 5.0)
        assert within.sum() >= 6, (head_precision, errors)
        assert np.median(errors[:, 0]) < 0.10, (head_precision, errors)


def _mirrored_walls_buffer(n_per_side: int = 8) -> tuple:
    """Two walls that look alike cell for cell: cameras around z = -1 face the wall at
    z = +2 and cameras around z = +1, turned by 180 degrees, the wall at z = -2, whose
    texture is the first one's mirror image, so a cell's features (Fourier features of its
    wall coordinates) name its point only up to that mirror. A random fifth of each image's
    cells also carries a mark of its wall (a landmark), which tells the walls apart in an
    image's mean feature but leaves the other cells ambiguous.

    Returns the buffer and the true world point of each of its cells."""
    height, width = 96, 128
    K = np.array([[100.0, 0.0, 63.5], [0.0, 100.0, 47.5], [0.0, 0.0, 1.0]])
    rng = np.random.default_rng(0)
    projection = torch.randn(2, 240, generator=torch.Generator().manual_seed(0)) * 3.0
    mark = torch.zeros(32)
    mark[::2] = 3.0
    buffer = TrainingBuffer(2 * n_per_side * 192, torch.device('cpu'))
    truth = []
    centers = cell_centers(height, width).reshape(2, -1).T.numpy().astype(np.float64)
    rays = (np.linalg.inv(K) @ np.c_[centers, np.ones(len(centers))].T).T
    for side in (1.0, -1.0):
        turn = geometry.axis_angle_to_matrix(np.array([0.0, np.pi if side < 0 else 0.0, 0.0]))
        for _ in range(n_per_side):
            centre = rng.uniform(-0.3, 0.3, 3) - np.array([0.0, 0.0, side])
            world_from_cam = geometry.make_pose(turn, centre)
            directions = rays @ turn.T
            world = centre + directions * ((2.0 * side - centre[2]) / directions[:, 2:3])
            wall = torch.tensor(np.c_[side * world[:, 0], world[:, 1]], dtype=torch.float32)
            angles = wall @ projection
            features = torch.cat([angles.sin(), angles.cos(), torch.zeros(len(world), 32)], 1)
            landmarks = torch.from_numpy(rng.random(len(world)) < 0.2)
            features[landmarks, 480:] = side * mark
            encoded = EncoderInput(np.zeros((height, width), np.float32), K,
                                   geometry.invert_pose(world_from_cam),
                                   np.ones((height, width), bool))
            start = buffer.size
            buffer.add_image(encoded, features.T.reshape(512, height // 8, width // 8), 192,
                             torch.Generator().manual_seed(1))
            cells = ((buffer.pixels[start:buffer.size] - 3.5) / 8).round().long()
            truth.append(world[(cells[:, 1] * (width // 8) + cells[:, 0]).numpy()])
    return buffer, torch.tensor(np.concatenate(truth), dtype=torch.float32)


def test_image_context_tells_apart_surfaces_that_look_alike():
    """On the mirrored walls, a head without context cannot place the ambiguous cells (no
    point fits both walls), even with every second cell's true point as a target; with
    each image's context it places the cells of both."""
    buffer, truth = _mirrored_walls_buffer()
    buffer.targets[:buffer.size:2] = truth[::2]  # as triangulation would give them
    image = buffer.image_index[:buffer.size].long()
    within = {}
    for context in (False, True):
        cfg = mapping_config('tiny', image_height=96, batch_size=512, max_iterations=300,
                             epochs=100.0, head_channels=128, global_context=context)
        head = Mapper(cfg, Runtime(torch.device('cpu'))).train(buffer, np.zeros(3)).head
        with torch.no_grad():
            points = head(buffer.features[:buffer.size],
                          buffer.context_table() if context else None,
                          image if context else None)
        within[context] = float(((points - truth).norm(dim=1) < 0.1).float().mean())
    assert within[True] > 0.8 and within[False] < 0.5, within


# -- the head trainer: a head warmed while keyframes arrive goes on from the peak --

def _training_cfg(**overrides):
    return mapping_config('tiny', image_height=HEIGHT, batch_size=512, epochs=100.0,
                          **overrides)


def _recorded(monkeypatch):
    """(learning rate, tau, target weight) of every step, recorded."""
    steps = []
    original = HeadTrainer.step

    def recording(self, buffer, tau, weight):
        steps.append((self.optimizer.param_groups[0]['lr'], tau, weight))
        return original(self, buffer, tau, weight)
    monkeypatch.setattr(HeadTrainer, 'step', recording)
    return steps


@pytest.fixture(scope='module')
def oracle():
    return _oracle_buffer(6, targets_every=4)


def test_a_fresh_head_runs_the_whole_one_cycle_schedule(oracle, monkeypatch):
    buffer, scene_mean = oracle
    cfg = _training_cfg(max_iterations=20)
    steps = _recorded(monkeypatch)
    Mapper(cfg, Runtime(torch.device('cpu'))).train(buffer, scene_mean)
    rates = [lr for lr, _, _ in steps]
    assert len(steps) == 20
    assert rates[0] == pytest.approx(cfg.learning_rate / 25)  # OneCycle's start
    assert max(rates) == pytest.approx(cfg.learning_rate, rel=0.05)
    assert rates.index(max(rates)) == 5  # the peak at 30 %
    assert steps[0][1] == soft_clamp_tau(0.0, cfg.loss_tau_max, cfg.loss_tau_min)
    assert steps[0][2] == cfg.target_weight


def test_after_a_warm_up_the_schedule_goes_on_from_its_peak(oracle, monkeypatch):
    buffer, scene_mean = oracle
    cfg = _training_cfg(max_iterations=20)
    mapper = Mapper(cfg, Runtime(torch.device('cpu')))
    trainer = mapper.new_trainer(buffer.features.shape[1], scene_mean)
    steps = _recorded(monkeypatch)
    for _ in range(12):
        trainer.warm_step(buffer, warmup_steps=8)
    warm = [lr for lr, _, _ in steps]
    # Rising along the warm-up, then held at the peak; the soft clamp at its widest and no
    # targets while keyframes arrive.
    assert warm[0] == pytest.approx(cfg.learning_rate / 25)
    assert all(b >= a for a, b in zip(warm, warm[1:]))
    assert warm[-1] == warm[-3] == pytest.approx(cfg.learning_rate, rel=1e-3)
    assert {tau for _, tau, _ in steps} == {soft_clamp_tau(0.0, cfg.loss_tau_max,
                                                           cfg.loss_tau_min)}
    assert {weight for _, _, weight in steps} == {0.0}
    del steps[:]
    run = mapper.train(buffer, scene_mean, trainer=trainer)
    assert run.head is trainer.head and run.iterations == 20 == len(steps)
    rates = [lr for lr, _, _ in steps]
    assert steps_before_annealing(20) == 9  # 20 x 0.3 / 0.7
    assert rates[0] == pytest.approx(cfg.learning_rate, rel=0.02)  # the peak, not a warm-up
    assert all(b <= a for a, b in zip(rates, rates[1:]))
    assert rates[-1] < 0.01 * cfg.learning_rate
    assert steps[0][1] == soft_clamp_tau(9 / 29, cfg.loss_tau_max, cfg.loss_tau_min)
    # No triangulated targets after a warm-up on reprojection alone (the next test).
    assert {weight for _, _, weight in steps} == {0.0}


def test_a_head_trained_without_targets_is_pulled_apart_by_late_ones(oracle):
    """Why a warm head gets no targets: on reprojection alone it fits the views (a few px)
    at depths the targets disagree with; switched on late, at full weight, they ruin it."""
    buffer, scene_mean = oracle
    cfg = _training_cfg(max_iterations=30)
    trainer = HeadTrainer(cfg, torch.device('cpu'), buffer.features.shape[1], scene_mean,
                          torch.Generator().manual_seed(0))
    for _ in range(120):
        warm = trainer.warm_step(buffer, 30)
    assert warm.median_error_px < 8.0
    for _ in range(10):
        late = trainer.step(buffer, cfg.loss_tau_max, cfg.target_weight)
    assert late.median_error_px > 5 * warm.median_error_px


def test_a_head_short_of_the_peak_is_not_gone_on_with(oracle):
    buffer, scene_mean = oracle
    mapper = Mapper(_training_cfg(max_iterations=20), Runtime(torch.device('cpu')))
    trainer = mapper.new_trainer(buffer.features.shape[1], scene_mean)
    trainer.warm_step(buffer, warmup_steps=8)
    assert not trainer.at_peak
    with pytest.raises(ValueError, match='took 1 of its 8 warm-up steps: train a fresh head'):
        mapper.train(buffer, scene_mean, trainer=trainer)


def test_a_head_warmed_while_collecting_fits_better_than_the_remainder_alone(oracle):
    """The warm steps are worth having: after the same 30 final iterations the warmed head
    fits the training views far better than a fresh head trained on them alone."""
    buffer, scene_mean = oracle
    cfg = _training_cfg(max_iterations=30)
    fresh = Mapper(cfg, Runtime(torch.device('cpu'))).train(buffer, scene_mean).last
    mapper = Mapper(cfg, Runtime(torch.device('cpu')))
    trainer = mapper.new_trainer(buffer.features.shape[1], scene_mean)
    for _ in range(120):
        trainer.warm_step(buffer, warmup_steps=30)
    warm = mapper.train(buffer, scene_mean, trainer=trainer).last
    assert warm.median_error_px < 0.5 * fresh.median_error_px, (warm.median_error_px,
                                                                fresh.median_error_px)


def test_the_trainer_sees_cells_added_to_the_buffer_since_its_last_epoch(oracle):
    buffer, scene_mean = oracle
    trainer = HeadTrainer(_training_cfg(), torch.device('cpu'), buffer.features.shape[1],
                          scene_mean, torch.Generator().manual_seed(0))
    full = buffer.size
    try:
        buffer.size = full // 2  # as if the second half had not arrived yet
        trainer.warm_step(buffer, 10)
        assert int(trainer._order.max()) < full // 2
        buffer.size = full
        trainer.warm_step(buffer, 10)
        assert trainer._order.numel() == full  # a new epoch over the grown buffer
    finally:
        buffer.size = full
