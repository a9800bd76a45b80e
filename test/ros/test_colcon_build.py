"""The distribution path: `colcon build` of the package, then what `ros2 run` and
`ros2 launch` would use from the install space (issue 17 item 6).

colcon (PyPI: colcon-core, colcon-ros, requirements-test.txt) builds the package with its
`ament_python` build type, as on a ROS 2 distribution, into a temporary workspace (never the
repository: its build/, install/ and log/ stay in a temporary folder). The venv's ROS wheels
stand in for /opt/ros/<distro>: AMENT_PREFIX_PATH names the venv, then the workspace's
install/local_setup.sh is sourced, as a user sources install/setup.bash. Checked:
- the package was identified as `ros.ament_python` and built with that build type;
- the ament resource index marker and the share files (package.xml, launch/, config/, rviz/)
  are where ament_index_python (what `ros2 launch` and get_package_share_directory use)
  finds them, identical to the repository's;
- the executables are in lib/ace_ros/ (where `ros2 run` looks: the package prefix from the
  ament index, then lib/<package>/<executable>), run the installed Python package, and parse
  `--ros-args`: a bad parameter ends each node at once with a clear error and exit code 2,
  a missing map is reported by a node started in a remapped namespace, which then stops
  cleanly on SIGINT.
Not run here (no PyPI wheels: see README): `ros2 run` and `ros2 launch` themselves (ros2cli,
launch, launch_ros), so the launch files are checked as installed files, not launched.
"""

from __future__ import annotations

import filecmp
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys
import time
from typing import Dict, List

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = 'ace_ros'
EXECUTABLES = ('ace-ros', 'localization_node', 'mapping_node')
#: What a source checkout in a workspace's src/ holds that setup.py reads.
SOURCES = ('setup.py', 'setup.cfg', 'package.xml', 'resource', 'ace_ros', 'launch', 'config',
           'rviz', 'LICENSE')
BIN = Path(sys.executable).parent  # the venv's bin/: colcon runs with the venv's Python


def _run(cmd: List[str], env: Dict[str, str], timeout: float, cwd: Path = Path("/")):
    # not the repository: `python -c` puts the working folder first on sys.path
    return subprocess.run([str(c) for c in cmd], cwd=str(cwd), env=env, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope='module')
def workspace(tmp_path_factory, ros_env) -> Path:
    """A colcon workspace with the package in src/, built (~3 s)."""
    colcon = BIN / 'colcon'
    assert colcon.exists(), (
        f'{colcon} is missing: colcon is in requirements-test.txt '
        '(bash scripts/setup.sh --test installs it)')
    ws = tmp_path_factory.mktemp('colcon_ws')
    src = ws / 'src' / PACKAGE
    src.mkdir(parents=True)
    ignore = shutil.ignore_patterns('__pycache__', '*.pyc', '*.egg-info')
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    # the venv's ROS first, as /opt/ros/<distro> sourced; no user colcon settings (~/.colcon)
    env = dict(ros_env, PATH=f'{BIN}{os.pathsep}{ros_env.get("PATH", "")}',
               AMENT_PREFIX_PATH=sys.prefix, COLCON_HOME=str(ws / 'colcon_home'))
    env.pop('PYTHONPATH', None)
    result = _run([colcon, '--log-base', ws / 'log', 'build', '--base-paths', ws / 'src',
                   '--build-base', ws / 'build', '--install-base', ws / 'install',
                   '--event-handlers', 'console_direct-'], env, timeout=180, cwd=ws)
    assert result.returncode == 0, result.stdout[-4000:]
    return ws


@pytest.fixture(scope='module')
def sourced_env(workspace, ros_env) -> Dict[str, str]:
    """The environment after sourcing install/local_setup.sh over the venv's ROS."""
    base = dict(ros_env, AMENT_PREFIX_PATH=sys.prefix)
    base.pop('PYTHONPATH', None)
    script = workspace / 'install' / 'local_setup.sh'
    result = subprocess.run(['bash', '-c', f'. "{script}" && env -0'], env=base, timeout=60,
                            stdout=subprocess.PIPE, check=True)
    env = dict(item.split('=', 1) for item in result.stdout.decode().split('\0') if '=' in item)
    prefix = str(workspace / 'install' / PACKAGE)
    assert env['AMENT_PREFIX_PATH'].split(os.pathsep)[:2] == [prefix, sys.prefix]
    return env


def _python(env: Dict[str, str], code: str) -> str:
    result = _run([sys.executable, '-c', code], env, timeout=60)
    assert result.returncode == 0, result.stdout[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_built_with_the_ament_python_build_type(workspace):
    log = (workspace / 'log' / 'latest_build' / 'logger_all.log').read_text()
    assert f"with type 'ros.ament_python' and name '{PACKAGE}'" in log
    assert "with build type 'ament_python'" in log
    assert (workspace / 'install' / PACKAGE / 'share' / 'colcon-core' / 'packages'
            / PACKAGE).is_file()
    # colcon's folders went to the workspace, none into the package source
    assert not {'build', 'install', 'log'} & {p.name for p in (workspace / 'src' / PACKAGE)
                                               .iterdir()}


def test_share_files_where_ament_index_finds_them(workspace, sourced_env):
    prefix = workspace / 'install' / PACKAGE
    marker = prefix / 'share' / 'ament_index' / 'resource_index' / 'packages' / PACKAGE
    assert marker.is_file()
    found = _python(sourced_env, (
        'from ament_index_python.packages import get_package_prefix, '
        'get_package_share_directory as share; '
        f'print(get_package_prefix("{PACKAGE}"), share("{PACKAGE}"))')).split()
    assert found == [str(prefix), str(prefix / 'share' / PACKAGE)]
    share = prefix / 'share' / PACKAGE
    expected = (['package.xml'] + sorted(str(p.relative_to(REPO)) for pattern in (
        'launch/*.launch.py', 'config/*.yaml', 'config/*.xml', 'rviz/*.rviz')
        for p in REPO.glob(pattern)))
    for must in ('launch/localization.launch.py', 'launch/mapping.launch.py',
                 'config/localization.yaml', 'config/mapping.yaml', 'rviz/ace_ros.rviz'):
        assert must in expected
    for name in expected:
        assert (share / name).is_file(), f'{name} is not installed to share/{PACKAGE}'
        assert filecmp.cmp(share / name, REPO / name, shallow=False), name


def test_installed_python_package_is_the_one_imported(workspace, sourced_env):
    site = workspace / 'install' / PACKAGE / 'lib' / f'python{sys.version_info[0]}.' \
        f'{sys.version_info[1]}' / 'site-packages'
    path = _python(sourced_env, 'import ace_ros; print(ace_ros.__file__)')
    assert Path(path) == site / PACKAGE / '__init__.py'
    assert list((site / PACKAGE / 'weights').glob('*.safetensors'))


def _executable(env: Dict[str, str], name: str) -> str:
    """What `ros2 run ace_ros <name>` runs: <prefix from the ament index>/lib/ace_ros/<name>."""
    return _python(env, (
        'import os; from ament_index_python.packages import get_package_prefix; '
        f'print(os.path.join(get_package_prefix("{PACKAGE}"), "lib", "{PACKAGE}", "{name}"))'))


def test_executables_installed_in_lib(workspace, sourced_env):
    lib = workspace / 'install' / PACKAGE / 'lib' / PACKAGE
    for name in EXECUTABLES:
        path = lib / name
        assert path.is_file() and os.access(path, os.X_OK), path
        shebang = path.read_text().splitlines()[0]
        # the Python that ran colcon: the venv's, which has torch and rclpy
        assert Path(shebang[2:].strip()).parent == BIN, shebang
    assert _executable(sourced_env, 'localization_node') == str(lib / 'localization_node')
    result = _run([lib / 'ace-ros', '--version'], sourced_env, timeout=60)
    assert result.returncode == 0 and 'ace_ros 0.1.0' in result.stdout, result.stdout


def _wait_for(process: subprocess.Popen, text: str, timeout_s: float) -> str:
    """Output of `process` up to the first line that contains `text`."""
    seen: List[str] = []
    deadline = time.monotonic() + timeout_s
    os.set_blocking(process.stdout.fileno(), False)
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line:
            seen.append(line)
            if text in line:
                return ''.join(seen)
        elif process.poll() is not None:
            break
        else:
            time.sleep(0.05)
    raise AssertionError(f'no {text!r} from the node (exit {process.poll()}):\n'
                         + ''.join(seen)[-3000:])


def test_installed_nodes_parse_ros_args(workspace, sourced_env, tmp_path):
    lib = workspace / 'install' / PACKAGE / 'lib' / PACKAGE
    missing = tmp_path / 'missing.ace'
    popen = dict(env=sourced_env, cwd=str(tmp_path), stdout=subprocess.PIPE,
                 stderr=subprocess.STDOUT, text=True)
    # All three start at once (each imports torch: ~4 s).
    running = subprocess.Popen(
        [str(lib / 'localization_node'), '--ros-args', '-r', '__ns:=/colcon_check',
         '-p', f'map_path:={missing}'], **popen)
    bad = {
        'localization_node': subprocess.Popen(
            [str(lib / 'localization_node'), '--ros-args', '-p', f'map_path:={missing}',
             '-p', 'image_qos:=bogus'], **popen),
        'mapping_node': subprocess.Popen(
            [str(lib / 'mapping_node'), '--ros-args', '-p', 'idle_timeout_s:=-1.0'], **popen),
    }
    try:
        outputs = {}
        for name, process in bad.items():
            outputs[name], _ = process.communicate(timeout=60)
            out = outputs[name]
            assert process.returncode == 2, f'{name} exit {process.returncode}:\n{out[-3000:]}'
            assert 'Traceback' not in out, out
        # the error names the bad parameter
        assert "image_qos must be 'sensor_data' or 'reliable'" in outputs['localization_node']
        assert 'idle_timeout_s must be >= 0' in outputs['mapping_node']
        # the node's logger carries the remapped namespace: --ros-args reached rclpy
        out = _wait_for(running, str(missing), timeout_s=60)
        line = out.splitlines()[-1]
        assert '[colcon_check.localization_node]' in line and 'does not exist' in line, out
        assert running.poll() is None, 'a missing map must not end the node (~/reload_map)'
        running.send_signal(signal.SIGINT)
        out, _ = running.communicate(timeout=20)
        assert running.returncode == 0, f'exit {running.returncode} on SIGINT:\n{out[-3000:]}'
    finally:
        for process in [running, *bad.values()]:
            if process.poll() is None:
                process.kill()
                process.wait()
