"""The declared dependencies match the imports: package.xml (rosdep keys for a ROS 2
distribution) and the pinned requirement files (the venv), both ways.

An import nobody declared breaks `rosdep install` users or a fresh venv; a pin nothing imports
makes every install heavier (issue 15: NNCF's ~13 packages everywhere, an unused message
package, test tools as run requirements).
"""

from __future__ import annotations

import ast
from pathlib import Path
import re
import sys
from typing import Dict, Set
import xml.etree.ElementTree as ET

ROOT = Path(__file__).resolve().parents[2]

#: Import name -> rosdep key where the two differ.
ROSDEP_KEYS = {'tf2_ros': 'tf2_ros_py', 'numpy': 'python3-numpy', 'cv2': 'python3-opencv',
               'yaml': 'python3-yaml', 'tqdm': 'python3-tqdm',
               'matplotlib': 'python3-matplotlib', 'pytest': 'python3-pytest',
               'PIL': 'python3-pil'}
#: Imported, installed with pip on a ROS 2 distribution too (package.xml says why).
PIP_ONLY = {'torch', 'safetensors', 'rosbags', 'openvino', 'nncf'}
#: Import name -> the pinned distribution that provides it, where they differ.
DISTRIBUTIONS = {'cv2': 'opencv-python-headless', 'yaml': 'PyYAML', 'PIL': 'pillow'}
#: Pinned without being imported: what a pinned package needs, or a tool.
NOT_IMPORTED = {
    'requirements.txt': {'contourpy', 'cycler', 'fonttools', 'kiwisolver'},
    'requirements-openvino.txt': {'openvino-telemetry'},
    'requirements-int8.txt': {'scipy', 'scikit-learn', 'joblib', 'threadpoolctl', 'networkx',
                              'pydot', 'rich', 'tabulate', 'psutil', 'ninja', 'narwhals',
                              'cloudpickle', 'markdown-it-py'},
    # colcon (test/ros/test_colcon_build.py runs it) and what it needs
    'requirements-test.txt': {'pytest-xdist', 'flake8', 'colcon-core', 'colcon-ros',
                              'colcon-cmake', 'colcon-python-setup-py', 'colcon-pkg-config',
                              'colcon-recursive-crawl', 'colcon-library-path',
                              'colcon-test-result', 'distlib', 'setuptools', 'pytest-cov',
                              'coverage', 'pytest-repeat', 'pytest-rerunfailures'},
    # the middleware rclpy runs on; the Header inside the messages
    'requirements-ros.txt': {'ros-rmw-fastrtps-cpp', 'ros-std-msgs'},
}
#: ROS imports that no PyPI wheel provides: built here (tf2_msgs), the real-ROS branch only
#: (tf2_ros), launch files only (ament_index_python comes with rclpy; launch, launch_ros).
NOT_ON_PYPI = {'tf2_msgs', 'tf2_ros', 'launch', 'launch_ros', 'ament_index_python'}

#: The project's own packages, and setup.py's build tool (test_launch_config.py runs
#: setup.py): colcon brings setuptools, and in the venv torch requires it.
OWN_AND_BUILD = {'ace_ros', 'test', 'setuptools'}


def _imports(*folders: str) -> Dict[str, Set[str]]:
    """Top-level modules imported (at any depth in the code) -> the files importing them;
    the standard library and the project's own packages left out."""
    found: Dict[str, Set[str]] = {}
    for folder in folders:
        for path in sorted((ROOT / folder).rglob('*.py')):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split('.')[0]
                    if top not in sys.stdlib_module_names and top not in OWN_AND_BUILD:
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def _package_xml():
    """package.xml's text and its root element; rosdep and colcon refuse malformed XML
    (a '--' inside a comment, say)."""
    text = (ROOT / 'package.xml').read_text()
    return text, ET.fromstring(text)


def _keys(package: ET.Element, *tags: str) -> Set[str]:
    return {element.text.strip() for tag in tags for element in package.iter(tag)}


def _pins(name: str) -> Dict[str, str]:
    """Normalized distribution name -> pinned version, this file only (no `-r`)."""
    pins = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split('#')[0].strip()
        if '==' in line:
            dist, version = line.split('==')
            pins[_normal(dist)] = version.strip()
    return pins


def _normal(name: str) -> str:
    return re.sub(r'[-_.]+', '-', name).lower().strip()


def test_package_xml_declares_what_the_package_and_its_launch_files_import():
    text, package = _package_xml()
    assert package.findtext('name') == 'ace_ros' and package.get('format') == '3'
    assert _keys(package, 'depend', 'build_export_depend') == set()  # exec/test only
    exec_keys = _keys(package, 'exec_depend')
    imported = _imports('ace_ros', 'launch')
    wanted = {ROSDEP_KEYS.get(name, name) for name in imported if name not in PIP_ONLY}
    assert wanted - exec_keys == set(), 'imported, not an exec_depend'
    assert exec_keys - wanted == set(), 'an exec_depend nothing imports'
    # The pip-only ones are named in package.xml's comment, which says why.
    assert {name for name in imported if name in PIP_ONLY} <= PIP_ONLY
    for name in PIP_ONLY & set(imported):
        assert name in text, name


def test_package_xml_test_depends_are_what_the_tests_import_beyond_exec_depends():
    _, package = _package_xml()
    exec_keys, test_keys = _keys(package, 'exec_depend'), _keys(package, 'test_depend')
    imported = _imports('test')
    wanted = {ROSDEP_KEYS.get(name, name) for name in imported if name not in PIP_ONLY}
    assert wanted - exec_keys - test_keys == set(), 'the tests import it, package.xml lacks it'
    assert test_keys - wanted == set(), 'a test_depend no test imports'
    assert test_keys & exec_keys == set()


def test_every_import_is_pinned_and_every_pin_is_imported_or_says_why():
    files = ('requirements.txt', 'requirements-openvino.txt', 'requirements-int8.txt',
             'requirements-test.txt')
    pins = {name: _pins(name) for name in files}
    all_pins = {dist for file_pins in pins.values() for dist in file_pins}
    ros_pins = _pins('requirements-ros.txt')
    runtime_ros = (ROOT / 'requirements-ros.txt').read_text().split('# Build-only')[0]
    runtime_ros_pins = {dist for dist in ros_pins if dist in runtime_ros}

    imported = _imports('ace_ros', 'launch', 'test')
    ros_imported = {name for name in imported
                    if f'ros-{_normal(name)}' in ros_pins or name in NOT_ON_PYPI
                    or name == 'rclpy'}
    for name in set(imported) - ros_imported:
        assert _normal(DISTRIBUTIONS.get(name, name)) in all_pins, f'{name} is not pinned'
    for name in ros_imported - NOT_ON_PYPI:
        assert f'ros-{_normal(name)}' in runtime_ros_pins, f'{name} is not pinned'

    imported_dists = {_normal(DISTRIBUTIONS.get(name, name)) for name in imported}
    for name, file_pins in pins.items():
        unexplained = set(file_pins) - imported_dists - {
            _normal(dist) for dist in NOT_IMPORTED[name]}
        assert unexplained == set(), f'{name} pins what nothing imports'
        assert {_normal(dist) for dist in NOT_IMPORTED[name]} <= set(file_pins), name
    ros_unexplained = runtime_ros_pins - {f'ros-{_normal(name)}' for name in ros_imported} \
        - NOT_IMPORTED['requirements-ros.txt']
    assert ros_unexplained == set(), 'requirements-ros.txt pins a runtime wheel nothing imports'


def test_optional_and_test_packages_are_not_run_requirements():
    run = _pins('requirements.txt')
    for dist in ('openvino', 'nncf', 'pytest', 'pytest-xdist', 'flake8'):
        assert dist not in run, dist
    # The CPU build of torch, by name (not whatever pip's sources happen to offer).
    assert run['torch'].endswith('+cpu')
    # Each optional file builds on the one before; the tests get OpenVINO and NNCF on every
    # CPU, since test_backends.py tests both unconditionally.
    assert '-r requirements-openvino.txt' in (ROOT / 'requirements-int8.txt').read_text()
    assert '-r requirements-int8.txt' in (ROOT / 'requirements-test.txt').read_text()
