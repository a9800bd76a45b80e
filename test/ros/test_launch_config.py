"""Launch files and parameter files, checked without importing `launch` (not on PyPI).

Launch files are parsed with `ast`; setup.py is run with setuptools.setup captured; the
parameter names and defaults come from the node modules' own parameter tables.
"""

from __future__ import annotations

import ast
import dataclasses
import os
from pathlib import Path
import re
import runpy
from typing import Any, Dict, List, Set

from ace_ros.core.config import config_from_dict, MappingConfig, PRESETS
from ace_ros.core.online_mapping import OnlineMappingConfig
from ace_ros.ros import mapping_node
import pytest
import setuptools
import yaml

REPO = Path(__file__).resolve().parents[2]
COMMON_ARGUMENTS = {'map', 'params_file', 'use_sim_time', 'namespace', 'device', 'image',
                    'camera_info', 'pose'}
LAUNCH = {  # launch file -> (executable = node name, parameter file)
    'mapping.launch.py': ('mapping_node', 'mapping.yaml'),
    'localization.launch.py': ('localization_node', 'localization.yaml'),
}
# A parameter shown commented out: '    # name: value' (a training setting left to the preset).
_COMMENTED = re.compile(r'^ {4}# ([a-z][a-z0-9_]*): (\S.*)$')


@pytest.fixture(scope='module')
def setup_kwargs() -> Dict[str, Any]:
    captured: Dict[str, Any] = {}
    original, cwd = setuptools.setup, os.getcwd()
    setuptools.setup = lambda **kwargs: captured.update(kwargs)
    os.chdir(REPO)  # setup.py globs relative paths
    try:
        runpy.run_path(str(REPO / 'setup.py'))
    finally:
        setuptools.setup = original
        os.chdir(cwd)
    return captured


def _call_name(call: ast.Call) -> str:
    return call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, 'attr', '')


def _calls(tree: ast.AST, name: str) -> List[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and _call_name(n) == name]


def _keyword(call: ast.Call, name: str) -> ast.AST:
    matches = [k.value for k in call.keywords if k.arg == name]
    assert matches, f'{_call_name(call)}(...) has no {name}='
    return matches[0]


def _resolve(tree: ast.AST, value: ast.AST) -> str:
    """Source text of `value`, or of the assignment it names."""
    if isinstance(value, ast.Name):
        assigned = [n.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id == value.id for t in n.targets)]
        assert len(assigned) == 1, f'{value.id} is not assigned once'
        return ast.unparse(assigned[0])
    return ast.unparse(value)


def _launch_tree(name: str) -> ast.AST:
    return ast.parse((REPO / 'launch' / name).read_text(), name)


def _declared_arguments(tree: ast.AST) -> Dict[str, ast.Call]:
    return {call.args[0].value: call for call in _calls(tree, 'DeclareLaunchArgument')}


def _yaml_parameters(path: Path, node_name: str) -> Dict[str, Any]:
    """Parameters set in the file plus those shown commented out, with their values."""
    data = yaml.safe_load(path.read_text())
    assert list(data) == [node_name], f'{path.name}: expected one node {node_name}'
    active = dict(data[node_name]['ros__parameters'])
    commented = {}
    for line in path.read_text().splitlines():
        match = _COMMENTED.match(line)
        if match:
            commented[match.group(1)] = yaml.safe_load(match.group(2))
    overlap = set(active) & set(commented)
    assert not overlap, f'{path.name}: set and also commented out: {sorted(overlap)}'
    return {**active, **commented}


def test_files_are_installed_and_nodes_are_console_scripts(setup_kwargs):
    data_files = {dest: set(files) for dest, files in setup_kwargs['data_files']}
    for name, (executable, params_file) in LAUNCH.items():
        assert f'launch/{name}' in data_files['share/ace_ros/launch'], name
        assert (REPO / 'launch' / name).is_file()
        if executable == 'mapping_node':  # localization.yaml belongs to its node's author
            assert f'config/{params_file}' in data_files['share/ace_ros/config']
    scripts = setup_kwargs['entry_points']['console_scripts']
    assert 'mapping_node = ace_ros.ros.mapping_node:main' in scripts


@pytest.mark.parametrize('launch_file', sorted(LAUNCH))
def test_launch_file_declares_arguments_and_runs_the_node(launch_file, setup_kwargs):
    executable, params_file = LAUNCH[launch_file]
    tree = _launch_tree(launch_file)
    arguments = _declared_arguments(tree)
    assert COMMON_ARGUMENTS <= set(arguments), sorted(COMMON_ARGUMENTS - set(arguments))
    for name, call in arguments.items():
        assert any(k.arg == 'description' for k in call.keywords), f'{name}: no description'
    # Every LaunchConfiguration used is declared (a typo would be an empty substitution).
    used = {c.args[0].value for c in _calls(tree, 'LaunchConfiguration')}
    assert used <= set(arguments), sorted(used - set(arguments))
    assert ast.literal_eval(_keyword(arguments['use_sim_time'], 'default_value')) == 'false'

    node = _ace_ros_node(tree)
    assert ast.literal_eval(_keyword(node, 'package')) == 'ace_ros'
    assert ast.literal_eval(_keyword(node, 'executable')) == executable
    assert ast.literal_eval(_keyword(node, 'name')) == executable
    scripts = {s.split('=')[0].strip() for s in setup_kwargs['entry_points']['console_scripts']}
    assert executable in scripts
    # The default parameter file is the package's own, found through the ament index.
    default = _resolve(tree, _keyword(arguments['params_file'], 'default_value'))
    assert "get_package_share_directory('ace_ros')" in default and params_file in default
    remapped = {ast.literal_eval(pair.elts[0]) for pair in _keyword(node, 'remappings').elts}
    assert {'image', 'camera_info'} <= remapped
    # Parameters set from launch arguments must be parameters the node declares.
    overrides = [d for d in _keyword(node, 'parameters').elts if isinstance(d, ast.Dict)]
    assert len(overrides) == 1
    keys = {ast.literal_eval(k) for k in overrides[0].keys}
    assert {'use_sim_time', 'map_path', 'device'} <= keys
    assert keys - {'use_sim_time'} <= _node_parameter_names(executable)


def _ace_ros_node(tree: ast.AST) -> ast.Call:
    """The launch file's one node of this package (others, such as rviz2, may follow)."""
    nodes = [n for n in _calls(tree, 'Node')
             if ast.literal_eval(_keyword(n, 'package')) == 'ace_ros']
    assert len(nodes) == 1
    return nodes[0]


def _node_parameter_names(executable: str) -> Set[str]:
    if executable == 'mapping_node':
        return set(mapping_node.parameter_defaults())
    from ace_ros.core.config import LocalizationConfig
    from ace_ros.ros import localization_node
    return set(localization_node.NODE_PARAMS) | {
        f.name for f in dataclasses.fields(LocalizationConfig)}


def test_localization_launch_argument_defaults_are_the_node_defaults():
    """A launch argument that sets a node parameter overrides the parameter file, so its
    default must be the node's own (e.g. mode:=continuous)."""
    from ace_ros.ros import localization_node
    tree = _launch_tree('localization.launch.py')
    arguments = _declared_arguments(tree)
    overrides = [d for d in _keyword(_ace_ros_node(tree), 'parameters').elts
                 if isinstance(d, ast.Dict)][0]
    forwarded = {}
    for key, value in zip(overrides.keys, overrides.values):
        argument = _calls(value, 'LaunchConfiguration')[0].args[0].value
        forwarded[ast.literal_eval(key)] = argument
    assert forwarded['mode'] == 'mode'
    for name, spec in localization_node.NODE_PARAMS.items():
        if name in forwarded and any(k.arg == 'default_value'
                                     for k in arguments[forwarded[name]].keywords):
            default = ast.literal_eval(_keyword(arguments[forwarded[name]], 'default_value'))
            expected = str(spec.default).lower() if isinstance(spec.default, bool) \
                else str(spec.default)  # launch spells booleans 'true' / 'false'
            assert default == expected, (name, default, spec.default)


def test_mapping_launch_remaps_every_input():
    node = _ace_ros_node(_launch_tree('mapping.launch.py'))
    remapped = {ast.literal_eval(pair.elts[0]) for pair in _keyword(node, 'remappings').elts}
    assert remapped == {'image', 'camera_info', 'pose', 'odom'}


def test_mapping_yaml_lists_every_parameter_with_its_default():
    declared = mapping_node.parameter_defaults()
    in_file = _yaml_parameters(REPO / 'config' / 'mapping.yaml', 'mapping_node')
    assert set(in_file) == set(declared), (
        f'missing from mapping.yaml: {sorted(set(declared) - set(in_file))}; '
        f'not declared by the node: {sorted(set(in_file) - set(declared))}')
    for name, default in declared.items():
        value = in_file[name]
        assert type(value) is type(default) and value == default, (
            f'mapping.yaml {name}: {value!r}, the code says {default!r}')


def test_mapping_yaml_leaves_preset_settings_to_the_preset():
    """A training setting set in the file would override every preset's value for it."""
    data = yaml.safe_load((REPO / 'config' / 'mapping.yaml').read_text())
    active = data['mapping_node']['ros__parameters']
    preset_fields: Set[str] = set()
    for overrides in PRESETS.values():
        preset_fields |= set(overrides)
    assert not preset_fields & set(active), sorted(preset_fields & set(active))
    # And the file is valid input for both settings classes (and for `ace-ros map --config`).
    config_from_dict(MappingConfig, {k: v for k, v in active.items()
                                     if k in {f.name for f in dataclasses.fields(MappingConfig)}},
                     'mapping.yaml')
    OnlineMappingConfig(**{k: v for k, v in active.items()
                           if k in {f.name for f in dataclasses.fields(OnlineMappingConfig)}})


def test_parameter_table_is_what_the_node_declares(make_node):
    """parameter_defaults() (what the file is checked against) is what the node declares."""
    builtin = set(make_node('baseline')._parameters)
    node = make_node('declare_check')
    mapping_node.declare_parameters(node)
    assert set(node._parameters) - builtin == set(mapping_node.parameter_defaults())


# --- RViz -----------------------------------------------------------------------------------

#: RViz display class -> the message type it shows.
_DISPLAY_TYPES = {'rviz_default_plugins/PointCloud2': 'PointCloud2',
                  'rviz_default_plugins/PoseWithCovariance': 'PoseWithCovarianceStamped',
                  'rviz_default_plugins/Image': 'Image'}


def _rviz_view() -> Dict[str, Any]:
    return yaml.safe_load((REPO / 'rviz' / 'ace_ros.rviz').read_text())


def test_rviz_view_is_installed_and_shows_what_the_node_publishes(setup_kwargs):
    data_files = {dest: set(files) for dest, files in setup_kwargs['data_files']}
    assert data_files['share/ace_ros/rviz'] == {'rviz/ace_ros.rviz', 'rviz/mapping.rviz'}
    manager = _rviz_view()['Visualization Manager']
    assert manager['Global Options']['Fixed Frame'] == 'map'
    displays = {d['Class']: d for d in manager['Displays']}
    assert {'rviz_default_plugins/TF', *_DISPLAY_TYPES} <= set(displays)
    # The node's publishers, as (message type, private topic), read from its source (a
    # managed node: lifecycle publishers).
    source = (REPO / 'ace_ros' / 'ros' / 'localization_node.py').read_text()
    published = dict((topic, kind) for kind, topic in re.findall(
        r"create_(?:lifecycle_)?publisher\(\s*(\w+),\s*'~/(\w+)'", source))
    assert {'map_cloud', 'pose_with_covariance'} <= set(published), published
    for display_class, kind in _DISPLAY_TYPES.items():
        topic = displays[display_class]['Topic']
        if display_class.endswith('/Image'):
            # The camera: the topic the node subscribes (relative, remapped alike by launch).
            assert topic['Value'] == 'image'
            assert "create_subscription(image_type, image_topic" in source
            assert topic['Reliability Policy'] == 'Best Effort'  # hears any camera
            continue
        # Relative names: rviz2 runs in the node's namespace (launch file below).
        node, _, name = topic['Value'].partition('/')
        assert node == 'localization_node' and published[name] == kind, topic['Value']
    # The cloud is published once per map load: RViz must ask for the latched copy.
    cloud_topic = displays['rviz_default_plugins/PointCloud2']['Topic']
    assert cloud_topic['Durability Policy'] == 'Transient Local'
    assert cloud_topic['Reliability Policy'] == 'Reliable'
    assert displays['rviz_default_plugins/PointCloud2']['Color Transformer'] == 'RGB8'
    assert "TRANSIENT_LOCAL" in source


@pytest.mark.parametrize('launch_file, view, remapped', [
    ('localization.launch.py', 'ace_ros.rviz', "[('image', LaunchConfiguration('image'))]"),
    ('mapping.launch.py', 'mapping.rviz', "[('image', LaunchConfiguration('image')), "
     "('pose', LaunchConfiguration('pose'))]")])
def test_launch_opens_rviz_only_when_asked(launch_file, view, remapped):
    tree = _launch_tree(launch_file)
    arguments = _declared_arguments(tree)
    assert ast.literal_eval(_keyword(arguments['rviz'], 'default_value')) == 'false'
    rviz = [n for n in _calls(tree, 'Node')
            if ast.literal_eval(_keyword(n, 'package')) == 'rviz2']
    assert len(rviz) == 1
    rviz = rviz[0]
    assert ast.literal_eval(_keyword(rviz, 'executable')) == 'rviz2'
    assert ast.unparse(_keyword(rviz, 'condition')) == "IfCondition(LaunchConfiguration('rviz'))"
    args = _keyword(rviz, 'arguments')
    assert ast.literal_eval(args.elts[0]) == '-d'
    config = _resolve(tree, args.elts[1])
    assert "get_package_share_directory('ace_ros')" in config
    assert f"'rviz', '{view}'" in config and (REPO / 'rviz' / view).is_file()
    # The same namespace as the node (the view's topic names are relative), its inputs.
    assert ast.unparse(_keyword(rviz, 'namespace')) == "LaunchConfiguration('namespace')"
    assert ast.unparse(_keyword(rviz, 'remappings')) == remapped


def test_mapping_rviz_view_shows_the_node_inputs():
    """mapping.rviz: TF, the image and the PoseStamped poses the node subscribes to, by the
    relative names the launch file remaps; best effort, so it hears any publisher."""
    manager = yaml.safe_load((REPO / 'rviz' / 'mapping.rviz').read_text())[
        'Visualization Manager']
    assert manager['Global Options']['Fixed Frame'] == 'map'
    displays = {d['Class']: d for d in manager['Displays']}
    assert 'rviz_default_plugins/TF' in displays
    source = (REPO / 'ace_ros' / 'ros' / 'mapping_node.py').read_text()
    for display, topic in (('Image', 'image'), ('Pose', 'pose')):
        shown = displays[f'rviz_default_plugins/{display}']['Topic']
        assert shown['Value'] == topic and shown['Reliability Policy'] == 'Best Effort'
    assert "create_subscription(PoseStamped, 'pose'" in source


@pytest.mark.parametrize('launch_file', sorted(LAUNCH))
def test_launch_autostart_argument_sets_the_lifecycle_parameter(launch_file):
    """autostart:=true (the default, as the node's) configures and activates at start."""
    from ace_ros.ros import node_base
    tree = _launch_tree(launch_file)
    arguments = _declared_arguments(tree)
    assert ast.literal_eval(_keyword(arguments['autostart'], 'default_value')) == 'true'
    assert node_base.LIFECYCLE_PARAMS['autostart'].default is True
    overrides = [d for d in _keyword(_ace_ros_node(tree), 'parameters').elts
                 if isinstance(d, ast.Dict)][0]
    forwarded = {ast.literal_eval(k): ast.unparse(v)
                 for k, v in zip(overrides.keys, overrides.values)}
    assert forwarded['autostart'] == \
        "ParameterValue(LaunchConfiguration('autostart'), value_type=bool)"
    assert 'autostart' in _node_parameter_names(LAUNCH[launch_file][0])
