"""Regions of a map: which frames each region holds, one head per region, and the localizer
trying the regions a query's context ranks first."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ace_ros.core import geometry
from ace_ros.core.buffer import TrainingBuffer, prepare_image
from ace_ros.core.config import LocalizationConfig, mapping_config
from ace_ros.core.localizer import Localizer, pose_errors
from ace_ros.core.mapfile import RegionHead, SceneMap, load_map, map_info, save_map
from ace_ros.core.mapper import Mapper
from ace_ros.core.network import Head, HeadConfig, cell_centers
from ace_ros.core.regions import assign_regions, rank_regions, regions_for
from ace_ros.core.runtime import Runtime
from ace_ros.core.types import Frame
from ace_ros.core.weights import build_encoder
from ace_ros.data.synthetic import SyntheticSceneConfig, generate_frames_with_depth

K = np.array([[100.0, 0.0, 79.5], [0.0, 100.0, 59.5], [0.0, 0.0, 1.0]])


def _frame(name: str, yaw_deg: float, centre=(0.0, 0.0, 0.0)) -> Frame:
    rotation = geometry.axis_angle_to_matrix(np.array([0.0, np.radians(yaw_deg), 0.0]))
    return Frame(name, np.zeros((120, 160, 3), np.uint8), K,
                 geometry.make_pose(rotation, np.asarray(centre, np.float64)))


def test_frames_looking_four_ways_make_four_regions():
    rng = np.random.default_rng(0)
    frames, side = [], []
    for k in range(40):
        frames.append(_frame(f'f{k}', 90.0 * (k % 4) + rng.uniform(-10, 10),
                             rng.uniform(-0.2, 0.2, 3)))
        side.append(k % 4)
    labels = assign_regions(frames, 4, seed=0)
    side = np.array(side)
    # Each side of the room is one region, and each region one side.
    for k in range(4):
        assert len(set(labels[side == k].tolist())) == 1
    assert sorted(set(labels.tolist())) == [0, 1, 2, 3]
    assert np.array_equal(labels, assign_regions(frames, 4, seed=0))


def test_a_scene_gets_as_few_regions_as_cover_its_views():
    rng = np.random.default_rng(0)
    four_ways = [_frame(f'f{k}', 90.0 * (k % 4) + rng.uniform(-10, 10),
                        rng.uniform(-0.2, 0.2, 3)) for k in range(40)]
    one_way = [_frame(f'f{k}', rng.uniform(-10, 10), rng.uniform(-0.2, 0.2, 3))
               for k in range(40)]
    assert len(set(regions_for(four_ways, 8, 0.5).tolist())) == 4
    assert len(set(regions_for(four_ways, 3, 0.5).tolist())) == 3  # at most 3
    assert len(set(regions_for(one_way, 8, 0.5).tolist())) == 1


def test_every_region_gets_a_frame_even_when_all_frames_look_alike():
    frames = [_frame(f'f{k}', 0.0) for k in range(6)]
    assert sorted(set(assign_regions(frames, 3).tolist())) == [0, 1, 2]
    with pytest.raises(ValueError, match='3 regions need at least 3 posed frames'):
        assign_regions(frames[:2], 3)


def test_regions_are_ranked_by_the_images_whose_context_is_most_like_the_query():
    rng = np.random.default_rng(1)
    looks = torch.tensor(rng.normal(size=(3, 64)), dtype=torch.float32)
    labels = torch.tensor([0] * 10 + [1] * 10 + [2] * 10)
    contexts = looks[labels] + 0.3 * torch.randn(30, 64, generator=torch.Generator()
                                                 .manual_seed(0))
    for region in range(3):
        query = looks[region] + 0.3 * torch.randn(64, generator=torch.Generator()
                                                  .manual_seed(region + 5))
        order = rank_regions(query, contexts, labels, 3)
        assert order[0] == region and sorted(order) == [0, 1, 2]


def _buffer_of(frames, cells_per_image=20, seed=0):
    buffer = TrainingBuffer(len(frames) * cells_per_image, torch.device('cpu'))
    generator = torch.Generator().manual_seed(seed)
    for frame in frames:
        prepared = prepare_image(frame, 120)
        features = torch.randn(512, 15, 20, generator=generator)
        buffer.add_image(prepared, features, cells_per_image, generator, source=frame.name)
    buffer.targets[:buffer.size:3] = torch.randn(len(range(0, buffer.size, 3)), 3)
    return buffer


def test_a_buffer_subset_holds_exactly_the_cells_of_its_images():
    frames = [_frame(f'f{k}', 10.0 * k) for k in range(5)]
    buffer = _buffer_of(frames)
    part = buffer.subset([3, 1])
    rows = torch.cat([torch.nonzero(buffer.image_index[:buffer.size] == i).squeeze(1)
                      for i in (1, 3)])
    assert part.size == rows.numel() == 40 and part.sources == ['f3', 'f1']
    cam, K_, _ = part.geometry_tables()
    full_cam, _, _ = buffer.geometry_tables()
    assert torch.equal(cam[0], full_cam[3]) and torch.equal(cam[1], full_cam[1])
    for image, original in ((0, 3), (1, 1)):
        mine = part.image_index[:part.size] == image
        theirs = buffer.image_index[:buffer.size] == original
        assert torch.equal(part.features[:part.size][mine], buffer.features[:buffer.size][theirs])
        assert torch.equal(part.pixels[:part.size][mine], buffer.pixels[:buffer.size][theirs])
        assert torch.equal(part.targets[:part.size][mine].nan_to_num(7.0),
                           buffer.targets[:buffer.size][theirs].nan_to_num(7.0))


def test_regions_share_out_the_iterations_and_each_head_fits_its_own_cells():
    """Oracle features (Fourier features of each cell's true point) over a full loop: two
    regions, each head trained only on its region's cells with its share of the iterations,
    fits them to a few pixels; together they use the one head's iteration cap."""
    scene = SyntheticSceneConfig(seed=3, width=160, height=120, focal=525 * 120 / 480,
                                 n_train=16, n_test=0, texel_size=0.01)
    projection = torch.randn(3, 256, generator=torch.Generator().manual_seed(0)) * 2.0
    frames, buffer = [], TrainingBuffer(16 * 300, torch.device('cpu'))
    generator = torch.Generator().manual_seed(0)
    centers = cell_centers(120, 160).reshape(2, -1).T.numpy().astype(np.float64)
    for frame, depth in generate_frames_with_depth(scene, 'train'):
        prepared = prepare_image(frame, 120)
        u, v = np.round(centers).astype(int).T
        rays = (np.linalg.inv(prepared.K) @ np.c_[centers, np.ones(len(centers))].T).T
        world = geometry.transform_points(frame.world_from_cam,
                                          rays * depth[v.clip(0, 119), u.clip(0, 159), None])
        angles = torch.tensor(world, dtype=torch.float32) @ projection
        features = torch.cat([angles.sin(), angles.cos()], 1).T.reshape(512, 15, 20)
        buffer.add_image(prepared, features, 300, generator, source=frame.name)
        frames.append(frame)
    cfg = mapping_config('tiny', image_height=120, batch_size=512, max_iterations=300,
                         epochs=100.0, regions=2, region_radius_m=0.01)
    split = Mapper(cfg, Runtime(torch.device('cpu'))).train_regions(buffer, frames)
    assert len(split.runs) == 2
    assert sum(part.size for part in split.buffers) == buffer.size
    assert sorted(s for part in split.buffers for s in part.sources) == sorted(buffer.sources)
    assert sum(run.iterations for run in split.runs) == pytest.approx(300, abs=1)
    for run, part in zip(split.runs, split.buffers):
        assert run.iterations == pytest.approx(300 * part.size / buffer.size, abs=1)
        assert run.last.median_error_px < 5.0, run.last.median_error_px
    assert np.array_equal(np.bincount(split.image_regions),
                          [part.n_images for part in split.buffers])


def _two_region_map(labels):
    """A map of two regions with random heads (the tests below replace their predictions)
    and one image context per label, all the same context."""
    encoder, sha, _ = build_encoder('random:0', torch.device('cpu'))
    head = Head(HeadConfig(channels=32, in_channels=512))
    other = Head(HeadConfig(channels=32, in_channels=512))
    scene_map = SceneMap(head.weights(), torch.zeros(3), sha, head.config.to_dict(), 'map',
                         mapping_config={'image_height': 120},
                         more_regions=[RegionHead(other.weights(), torch.ones(3))],
                         region_contexts=torch.ones(len(labels), 512),
                         region_labels=torch.tensor(labels))
    return scene_map, Runtime(torch.device('cpu'), encoder, sha)


def test_a_map_of_regions_survives_its_file(tmp_path):
    scene_map, _ = _two_region_map([0, 1, 1])
    save_map(str(tmp_path / 'r.ace'), scene_map)
    loaded = load_map(str(tmp_path / 'r.ace'))
    assert loaded.n_regions == 2
    for r in range(2):
        for name, tensor in scene_map.region(r).head_state.items():
            assert torch.equal(loaded.region(r).head_state[name], tensor)
        assert torch.equal(loaded.region(r).scene_mean, scene_map.region(r).scene_mean)
    assert torch.equal(loaded.region_labels, torch.tensor([0, 1, 1]))
    info = map_info(str(tmp_path / 'r.ace'))
    assert info['regions'] == 2 and info['format_version'] == 3
    assert info['num_parameters'] == 2 * sum(t.numel() for t in scene_map.head_state.values())
    with pytest.raises(ValueError, match='needs region_contexts and region_labels'):
        SceneMap(scene_map.head_state, torch.zeros(3), scene_map.encoder_sha256,
                 scene_map.head_config, 'map', more_regions=scene_map.more_regions)
    with pytest.raises(ValueError, match=r'region_labels must be in 0..1'):
        _two_region_map([0, 2])


@pytest.fixture(scope='module')
def query():
    scene = SyntheticSceneConfig(seed=4, width=160, height=120, focal=525 * 120 / 480,
                                 n_train=1, n_test=0, texel_size=0.01)
    frame, depth = next(generate_frames_with_depth(scene, 'train'))
    centers = cell_centers(120, 160).reshape(2, -1).T.numpy().astype(np.float64)
    u, v = np.round(centers).astype(int).T
    rays = (np.linalg.inv(frame.K) @ np.c_[centers, np.ones(len(centers))].T).T
    world = geometry.transform_points(frame.world_from_cam,
                                      rays * depth[v.clip(0, 119), u.clip(0, 159), None])
    return frame, torch.tensor(world, dtype=torch.float32)


@pytest.mark.parametrize('labels, tried, found', [
    ([1, 1, 1], 2, True),    # the right region ranked first
    ([0, 0, 0], 2, True),    # ranked second: tried after the first fails
    ([0, 0, 0], 1, False)])  # ranked second, but only one region may be tried
def test_the_localizer_takes_the_region_whose_head_explains_the_image(
        query, labels, tried, found):
    frame, truth = query
    scene_map, runtime = _two_region_map(labels)
    localizer = Localizer(scene_map, LocalizationConfig(device='cpu', backend='torch',
                                                        regions_tried=tried,
                                                        region_accept_inliers=150), runtime)
    calls = []
    noise = torch.Generator().manual_seed(0)

    def region(index, points):
        def predict(features):
            calls.append(index)
            return points
        return predict
    localizer._predicts = [region(0, torch.rand(len(truth), 3, generator=noise) * 4),
                           region(1, truth)]
    result = localizer.localize(frame)
    assert calls == ([1] if labels[0] == 1 else [0, 1][:tried])
    assert result.success is found
    if found:
        assert result.region == 1
        t_err, r_err = pose_errors(result, frame.world_from_cam)
        assert t_err < 0.01 and r_err < 0.5


def test_warming_up_runs_every_regions_head(query):
    """So that no region's first frame pays for compiling its head (OpenVINO: ~2 s)."""
    frame, truth = query
    scene_map, runtime = _two_region_map([0, 1])
    localizer = Localizer(scene_map, LocalizationConfig(device='cpu', backend='torch'), runtime)
    calls = []
    localizer._predicts = [lambda f, r=r: calls.append(r) or truth for r in range(2)]
    localizer.warm_up(frame)
    assert calls == [0, 1]


def test_a_buffer_from_other_frames_gets_one_head_not_regions(caplog):
    frames = [_frame(f'f{k}', 90.0 * (k % 4)) for k in range(8)]
    buffer = _buffer_of(frames[:4])
    buffer.sources[0] = 'elsewhere'
    cfg = mapping_config('tiny', regions=4, max_iterations=5)
    assert Mapper(cfg, Runtime(torch.device('cpu'))).train_regions(buffer, frames) is None
    assert 'come from none of the frames' in caplog.text
