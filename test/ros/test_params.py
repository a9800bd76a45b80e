"""ROS parameters from the settings dataclasses; diagnostics helpers; the one-slot mailbox."""

from __future__ import annotations

import dataclasses
from pathlib import Path
import threading

from ace_ros.core.config import LocalizationConfig, MappingConfig, PRESETS
from ace_ros.ros import diagnostics, params
from ace_ros.ros.localization_node import LatestSlot, NODE_PARAMS
import pytest
from rclpy.parameter import Parameter
import yaml

REPO = Path(__file__).resolve().parents[2]


def _overrides(**values):
    return [Parameter(k, value=v) for k, v in values.items()]


def test_every_field_becomes_a_described_parameter(make_node):
    node = make_node('params_loc')
    params.declare_config(node, LocalizationConfig)
    for f in dataclasses.fields(LocalizationConfig):
        assert node.get_parameter(f.name).value == f.default
        descriptor = node.describe_parameter(f.name)
        assert descriptor.description == f.metadata['help']
    assert params.read_config(node, LocalizationConfig) == LocalizationConfig()


def test_overrides_are_read_and_validated(make_node):
    # An int for a float field is accepted (YAML writes 12 for 12.0).
    node = make_node('params_loc2', parameter_overrides=_overrides(
        min_inliers=30, inlier_threshold_px=12, device='cpu'))
    params.declare_config(node, LocalizationConfig)
    cfg = params.read_config(node, LocalizationConfig)
    assert cfg.min_inliers == 30 and cfg.inlier_threshold_px == 12.0 and cfg.device == 'cpu'
    bad = make_node('params_loc3', parameter_overrides=_overrides(image_height=100))
    params.declare_config(bad, LocalizationConfig)
    with pytest.raises(ValueError, match='image_height must be a multiple of 8, got 100'):
        params.read_config(bad, LocalizationConfig)


def test_mapping_preset_sets_defaults_and_explicit_values_win(make_node):
    node = make_node('params_map', parameter_overrides=_overrides(preset='tiny',
                                                                  batch_size=512))
    params.declare_config(node, MappingConfig)
    cfg = params.read_config(node, MappingConfig)
    assert cfg.preset == 'tiny' and cfg.batch_size == 512
    assert cfg.image_height == PRESETS['tiny']['image_height']
    assert node.get_parameter('max_iterations').value == PRESETS['tiny']['max_iterations']
    unknown = make_node('params_map2', parameter_overrides=_overrides(preset='huge'))
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        params.declare_config(unknown, MappingConfig)


def test_node_parameter_specs(make_node):
    specs = {'rate': params.ParamSpec(2.0, 'Hz'), 'name': params.ParamSpec('x', 'a name')}
    node = make_node('params_specs', parameter_overrides=_overrides(rate=5))
    params.declare_parameters(node, specs)
    assert params.read_parameters(node, specs) == {'rate': 5.0, 'name': 'x'}
    node.set_parameters([Parameter('rate', value='fast')])
    with pytest.raises(ValueError, match="parameter rate must be float, got 'fast'"):
        params.read_parameters(node, specs)


def test_localization_yaml_lists_every_parameter_with_its_default():
    data = yaml.safe_load((REPO / 'config' / 'localization.yaml').read_text())
    values = data['localization_node']['ros__parameters']
    declared = {n: s.default for n, s in NODE_PARAMS.items()}
    declared.update({f.name: f.default for f in dataclasses.fields(LocalizationConfig)})
    assert values == declared


def test_rate_meter_and_window_stats():
    meter = diagnostics.RateMeter(window_s=5.0)
    for i in range(11):
        meter.tick(now=100.0 + i * 0.1)
    assert meter.rate(now=101.0) == pytest.approx(10.0)
    assert meter.rate(now=200.0) == 0.0 and meter.count == 11
    stats = diagnostics.WindowStats(size=3)
    for v in (1.0, 2.0, 3.0, 10.0):
        stats.add({'encoder': v})
    assert stats.summary() == {'encoder': (5.0, 10.0)}


def test_diagnostics_statuses(make_node):
    node = make_node('diag_node')
    diag = diagnostics.Diagnostics(node, hardware_id='cpu', period_s=0.0)
    diag.add_task('good', lambda: diagnostics.Report(diagnostics.WARN, 'slow', {'rate': 1.5}))
    diag.add_task('broken', lambda: 1 / 0)
    good, broken = diag.statuses()
    assert good.name == 'diag_node: good' and good.level == bytes([diagnostics.WARN])
    assert good.hardware_id == 'cpu' and good.values[0].value == '1.5'
    assert broken.level == bytes([diagnostics.ERROR]) and 'ZeroDivisionError' in broken.message


def test_latest_slot_keeps_only_the_newest_item():
    slot = LatestSlot()
    assert slot.take(timeout_s=0.01) is None
    assert slot.put(1) is False and slot.put(2) is True and slot.put(3) is True
    assert slot.take() == 3 and slot.dropped == 2
    threading.Timer(0.05, slot.put, (4,)).start()
    assert slot.take(timeout_s=5.0) == 4
    slot.close()
    assert slot.take() is None
