"""Tests for ace_ros.core.config and ace_ros.cli_args: defaults, presets, validation, flags."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ace_ros.cli_args import add_config_flags, config_from_args, read_yaml_settings
from ace_ros.core.config import config_from_dict, config_to_dict, LocalizationConfig, \
    mapping_config, MappingConfig, PRESETS
import pytest
import yaml


def test_mapping_defaults_are_the_papers_numbers():
    cfg = MappingConfig()
    assert cfg.batch_size == 5120
    assert cfg.learning_rate == 5e-3
    assert cfg.epochs == 16.0
    assert cfg.samples_per_image == 1024
    assert cfg.buffer_size == 8_000_000
    assert cfg.image_height == 480
    assert (cfg.aug_scale_min, cfg.aug_scale_max) == pytest.approx((1 / 1.5, 1.5))
    assert cfg.aug_rotation_deg == 15.0
    assert (cfg.aug_brightness, cfg.aug_contrast) == (0.1, 0.1)
    assert (cfg.loss_tau_max, cfg.loss_tau_min) == (50.0, 1.0)
    assert (cfg.depth_min, cfg.depth_max, cfg.max_reprojection_px) == (0.1, 1000.0, 1000.0)
    assert cfg.invalid_target_depth == 10.0
    assert cfg.head_blocks == 1
    assert cfg.preset == 'default'


def test_localization_defaults_are_the_papers_numbers():
    cfg = LocalizationConfig()
    assert cfg.ransac_hypotheses == 64
    assert cfg.inlier_threshold_px == 10.0
    assert cfg.max_reprojection_px == 100.0
    assert cfg.refinement_iterations == 100
    assert cfg.image_height == 0  # the map's


def test_every_field_has_help_and_a_supported_type():
    for cls in (MappingConfig, LocalizationConfig):
        for f in dataclasses.fields(cls):
            assert f.metadata.get('help'), f.name
            assert type(f.default) in (bool, int, float, str, list), f.name


def test_presets_apply():
    assert mapping_config() == MappingConfig()
    cpu = mapping_config('cpu')
    assert (cpu.preset, cpu.max_iterations, cpu.batch_size) == ('cpu', 20_000, 2560)
    assert cpu.learning_rate == 0.01  # twice the default: short schedules, regions (session 21)
    assert (cpu.head_channels, cpu.triangulate) == (128, True)
    # Upscaled images are cropped: an upscaled encoding costs a CPU 2.7x an unscaled one.
    assert (cpu.aug_scale_min, cpu.aug_scale_max) == pytest.approx((1 / 1.5, 1.5))
    assert cpu.aug_crop
    assert (cpu.global_context, cpu.context_noise) == (True, 0.1)
    # A fixed budget: ~500 image encodings whatever the scene's size.
    for n_frames, cells in ((500, 512_000), (50, 50 * 10 * 1024), (1000, 512_000)):
        assert min(cpu.buffer_size,
                   n_frames * cpu.max_buffer_passes * cpu.samples_per_image) == cells
    tiny = mapping_config('tiny')
    for name, value in PRESETS['tiny'].items():
        assert getattr(tiny, name) == value
    assert tiny.image_height == 240 and tiny.preset == 'tiny'


def test_explicit_overrides_win_over_the_preset():
    cfg = mapping_config('tiny', batch_size=64, image_height=96, learning_rate=1e-3)
    assert (cfg.batch_size, cfg.image_height, cfg.learning_rate) == (64, 96, 1e-3)
    assert cfg.samples_per_image == PRESETS['tiny']['samples_per_image']
    assert cfg.preset == 'tiny'


@pytest.mark.parametrize('overrides, message', [
    ({'batch_size': -1}, 'batch_size must be > 0, got -1'),
    ({'learning_rate': 0.0}, 'learning_rate must be > 0'),
    ({'buffer_size': 0}, 'buffer_size must be > 0'),
    ({'epochs': -2.0}, 'epochs must be > 0'),
    ({'image_height': 100}, 'image_height must be a multiple of 8, got 100'),
    ({'image_height': -8}, 'image_height must be > 0'),
    ({'aug_scale_min': 2.0}, 'aug_scale_min <= aug_scale_max'),
    ({'aug_scale_min': 0.0}, '0 < aug_scale_min'),
    ({'depth_max': 0.05}, 'depth_max .* must exceed depth_min'),
    ({'max_iterations': -1}, 'max_iterations, head_blocks and time_budget_s must be >= 0'),
    ({'head_blocks': -1}, 'max_iterations, head_blocks and time_budget_s must be >= 0'),
    ({'time_budget_s': -1.0}, 'max_iterations, head_blocks and time_budget_s must be >= 0'),
    ({'preset': 'fast'}, "unknown preset 'fast'"),
])
def test_mapping_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        MappingConfig(**overrides)


def test_bad_preset_name():
    with pytest.raises(ValueError, match=r"unknown preset 'gpu'; choose one of \['cpu', "):
        mapping_config('gpu')


@pytest.mark.parametrize('overrides, message', [
    ({'ransac_hypotheses': 0}, 'ransac_hypotheses must be > 0'),
    ({'image_height': 479}, 'multiple of 8'),
    ({'min_inliers': 3}, 'min_inliers must be >= 4'),
    ({'refinement_iterations': -1}, 'refinement_iterations must be >= 0'),
    ({'inlier_threshold_px': 200.0}, 'must exceed inlier_threshold_px'),
])
def test_localization_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        LocalizationConfig(**overrides)


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        MappingConfig().batch_size = 1


def test_config_from_dict_builds_and_converts_ints_to_floats():
    cfg = config_from_dict(MappingConfig, {'learning_rate': 1, 'epochs': 2, 'batch_size': 7},
                           'x.yaml')
    assert isinstance(cfg.learning_rate, float) and cfg.learning_rate == 1.0
    assert isinstance(cfg.epochs, float) and cfg.epochs == 2.0
    assert cfg.batch_size == 7
    loc = config_from_dict(LocalizationConfig, {'inlier_threshold_px': 5}, 'x.yaml')
    assert isinstance(loc.inlier_threshold_px, float) and loc.inlier_threshold_px == 5.0


def test_config_from_dict_applies_the_preset():
    cfg = config_from_dict(MappingConfig, {'preset': 'tiny', 'batch_size': 7}, 'x.yaml')
    assert cfg.preset == 'tiny' and cfg.batch_size == 7 and cfg.image_height == 240


def test_config_from_dict_refuses_unknown_keys():
    with pytest.raises(ValueError, match=r"x\.yaml: unknown settings \['batch_sise'\]"):
        config_from_dict(MappingConfig, {'batch_sise': 7}, 'x.yaml')
    with pytest.raises(ValueError, match='unknown settings'):
        config_from_dict(LocalizationConfig, {'batch_size': 7}, 'x.yaml')


@pytest.mark.parametrize('values, message', [
    ({'batch_size': '7'}, "batch_size must be int, got '7'"),
    ({'batch_size': 7.0}, 'batch_size must be int, got 7.0'),
    ({'batch_size': True}, 'batch_size must be int, got True'),
    ({'augment': 1}, 'augment must be bool, got 1'),
    ({'augment': 'yes'}, 'augment must be bool'),
    ({'learning_rate': True}, 'learning_rate must be float, got True'),
    ({'learning_rate': '5e-3'}, 'learning_rate must be float'),
    ({'device': 0}, 'device must be str, got 0'),
])
def test_config_from_dict_refuses_wrong_types(values, message):
    with pytest.raises(ValueError, match=rf'x\.yaml: {message}'):
        config_from_dict(MappingConfig, values, 'x.yaml')


def test_config_round_trips_through_a_dict():
    cfg = mapping_config('tiny', batch_size=9)
    assert config_from_dict(MappingConfig, config_to_dict(cfg), 'dict') == cfg
    loc = LocalizationConfig(min_inliers=20)
    assert config_from_dict(LocalizationConfig, config_to_dict(loc), 'dict') == loc


# -- cli_args -------------------------------------------------------------------------------

def _parse(cls, argv):
    parser = argparse.ArgumentParser()
    add_config_flags(parser, cls)
    return config_from_args(cls, parser.parse_args(argv))


def test_flags_are_generated_for_every_field():
    for cls in (MappingConfig, LocalizationConfig):
        parser = argparse.ArgumentParser()
        add_config_flags(parser, cls)
        options = parser._option_string_actions  # argparse keeps no public index
        for f in dataclasses.fields(cls):
            flag = '--' + f.name.replace('_', '-')
            assert flag in options, flag
            if isinstance(f.default, bool):
                assert '--no-' + f.name.replace('_', '-') in options
        assert '--config' in options


def test_flags_parse():
    cfg = _parse(MappingConfig, ['--batch-size', '10', '--no-augment', '--learning-rate',
                                 '0.01', '--device', 'cpu'])
    assert cfg == MappingConfig(batch_size=10, augment=False, learning_rate=0.01, device='cpu')
    assert _parse(MappingConfig, []) == MappingConfig()
    assert _parse(MappingConfig, ['--augment']).augment is True
    assert _parse(LocalizationConfig, ['--min-inliers', '20']).min_inliers == 20


def test_bad_flag_values():
    with pytest.raises(SystemExit):
        _parse(MappingConfig, ['--batch-size', 'many'])
    with pytest.raises(ValueError, match='batch_size must be > 0'):
        _parse(MappingConfig, ['--batch-size', '-5'])


def _write_yaml(path: Path, settings: dict, ros_layout: bool) -> str:
    data = {'mapping_node': {'ros__parameters': settings}} if ros_layout else settings
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize('ros_layout', [False, True])
def test_precedence_defaults_preset_yaml_flags(tmp_path, ros_layout):
    config = _write_yaml(tmp_path / 'mapping.yaml',
                         {'preset': 'tiny', 'batch_size': 100, 'epochs': 3}, ros_layout)
    cfg = _parse(MappingConfig, ['--config', config, '--epochs', '2'])
    assert cfg.preset == 'tiny'
    assert cfg.image_height == 240                # preset beats the default (480)
    assert cfg.batch_size == 100                  # YAML beats the preset (2048)
    assert cfg.epochs == 2.0                      # flag beats YAML (3) and preset (12)
    assert cfg.learning_rate == 5e-3              # default, set nowhere else
    # A preset given as a flag still loses to the YAML's explicit values.
    cfg = _parse(MappingConfig, ['--config', config, '--preset', 'cpu'])
    assert cfg.preset == 'cpu' and cfg.batch_size == 100 and cfg.epochs == 3.0
    assert cfg.max_iterations == 20_000            # the preset's own


def test_ros_layout_ignores_node_only_parameters(tmp_path):
    config = _write_yaml(tmp_path / 'loc.yaml', {'min_inliers': 30, 'map_frame': 'map',
                                                 'image_topic': '/camera/image'}, True)
    assert _parse(LocalizationConfig, ['--config', config]).min_inliers == 30


def test_yaml_type_errors_name_the_file(tmp_path):
    config = _write_yaml(tmp_path / 'bad.yaml', {'batch_size': 'lots'}, False)
    with pytest.raises(ValueError, match=r'bad\.yaml: batch_size must be int'):
        _parse(MappingConfig, ['--config', config])


def test_read_yaml_settings_layouts_and_errors(tmp_path):
    flat = _write_yaml(tmp_path / 'flat.yaml', {'seed': 3}, False)
    ros = _write_yaml(tmp_path / 'ros.yaml', {'seed': 3}, True)
    assert read_yaml_settings(flat) == read_yaml_settings(ros) == {'seed': 3}
    empty = tmp_path / 'empty.yaml'
    empty.write_text('')
    assert read_yaml_settings(str(empty)) == {}
    two = tmp_path / 'two.yaml'
    two.write_text(yaml.safe_dump({'a': {'ros__parameters': {}}, 'b': {'ros__parameters': {}}}))
    with pytest.raises(ValueError, match='holds 2 nodes; expected one'):
        read_yaml_settings(str(two))
    listed = tmp_path / 'list.yaml'
    listed.write_text('- 1\n- 2\n')
    with pytest.raises(ValueError, match='expected a mapping, got list'):
        read_yaml_settings(str(listed))
    with pytest.raises(ValueError, match='does not exist'):
        read_yaml_settings(str(tmp_path / 'absent.yaml'))
