"""ace_ros.core and ace_ros.data must import without ROS: no rclpy, no *_msgs packages."""

from __future__ import annotations

import json
import os
from pathlib import Path
import subprocess
import sys
from typing import Dict, List, Optional

# Runs in a fresh interpreter so that modules imported by other tests do not count.
_SCRIPT = r'''
import importlib
import json
import pkgutil
import sys

imported = []
for package_name in ('ace_ros.core', 'ace_ros.data'):
    package = importlib.import_module(package_name)
    imported.append(package_name)
    for info in pkgutil.walk_packages(package.__path__, package_name + '.'):
        importlib.import_module(info.name)
        imported.append(info.name)
for extra in sys.argv[1:]:
    importlib.import_module(extra)

ros = sorted(name for name in sys.modules
             if any(part == 'rclpy' or part.endswith('_msgs') for part in name.split('.')))
print(json.dumps({'imported': imported, 'ros': ros}))
'''


def _run(extra: List[str], pythonpath: Optional[Path] = None) -> Dict[str, List[str]]:
    env = dict(os.environ)
    if pythonpath is not None:
        env['PYTHONPATH'] = os.pathsep.join(
            p for p in (str(pythonpath), env.get('PYTHONPATH', '')) if p)
    done = subprocess.run([sys.executable, '-c', _SCRIPT, *extra], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_core_and_data_import_without_ros():
    result = _run([])
    assert result['ros'] == []
    imported = set(result['imported'])
    for module in ('ace_ros.core.geometry', 'ace_ros.core.network', 'ace_ros.core.buffer',
                   'ace_ros.core.weights', 'ace_ros.core.config', 'ace_ros.core.loss',
                   'ace_ros.core.metrics', 'ace_ros.core.tf_tree', 'ace_ros.data.base',
                   'ace_ros.data.rosbag_source'):
        assert module in imported


def test_the_nodes_ros_free_helpers_import_without_ros():
    # The nodes' state and time logic lives in these so that it is tested without rclpy.
    result = _run(['ace_ros.ros.controls', 'ace_ros.ros.timing'])
    assert result['ros'] == []


def test_the_check_detects_a_ros_import(tmp_path):
    # Guards the test above: a (fake) message package imported alongside core is reported.
    package = tmp_path / 'fake_msgs'
    (package / 'msg').mkdir(parents=True)
    (package / '__init__.py').write_text('')
    (package / 'msg' / '__init__.py').write_text('')
    result = _run(['fake_msgs.msg'], pythonpath=tmp_path)
    assert result['ros'] == ['fake_msgs', 'fake_msgs.msg']
