"""ROS test environment: real rclpy over Fast DDS, isolated per test run and xdist worker.

Set at import (before any rclpy.init), and inherited by node subprocesses:
- ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST: discovery stays on this machine;
- ROS_DOMAIN_ID: one per xdist worker, offset per test run, so parallel workers and
  concurrent runs on the same machine do not hear each other;
- ROS_LOG_DIR: a temporary folder (rclpy writes log files there);
- FASTDDS_DEFAULT_PROFILES_FILE: config/fastdds_shm.xml (32 MiB shared memory, so
  best-effort images are not dropped for being bigger than the default segment).

Fixtures: `ros_env` (environment for node subprocesses), `ros_context` (an initialised rclpy
Context for in-process nodes; module scope), `make_node` (nodes in that context, destroyed at
the end), `spin_until` (spin an executor until a predicate holds or a timeout).
"""

from __future__ import annotations

import os
from pathlib import Path
import tempfile
import time
from typing import Callable, Dict, Iterator, List

import pytest

REPO = Path(__file__).resolve().parents[2]
FASTDDS_PROFILE = REPO / 'config' / 'fastdds_shm.xml'


def _domain_id() -> int:
    worker = os.environ.get('PYTEST_XDIST_WORKER', 'gw0')
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    # Under xdist every worker's parent is the controller, so the offset is shared within a
    # run and differs between runs; the worker index keeps workers apart. Domains 1..100.
    run = os.getppid() if 'PYTEST_XDIST_WORKER' in os.environ else os.getpid()
    return 1 + (run * 7 + index) % 100


def _setup_environment() -> None:
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    os.environ['ROS_DOMAIN_ID'] = str(_domain_id())
    os.environ['ROS_LOG_DIR'] = tempfile.mkdtemp(prefix='ace_ros_test_log_')
    os.environ['FASTDDS_DEFAULT_PROFILES_FILE'] = str(FASTDDS_PROFILE)
    os.environ['RMW_IMPLEMENTATION'] = 'rmw_fastrtps_cpp'
    os.environ['RCUTILS_COLORIZED_OUTPUT'] = '0'
    os.environ['PYTHONUNBUFFERED'] = '1'
    os.environ.pop('ROS_LOCALHOST_ONLY', None)


_setup_environment()


def pytest_configure(config) -> None:
    # rclpy's type support imports rosidl_parser -> lark, which imports deprecated modules.
    config.addinivalue_line(
        'filterwarnings', 'ignore:module .sre_.* is deprecated:DeprecationWarning:lark')


@pytest.fixture(scope='session')
def ros_env() -> Dict[str, str]:
    """Environment for node subprocesses (same domain, discovery range and profile)."""
    return dict(os.environ)


@pytest.fixture(scope='module')
def ros_context() -> Iterator[object]:
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        rclpy.try_shutdown(context=context)


@pytest.fixture
def make_node(ros_context) -> Iterator[Callable[..., object]]:
    """make_node(name, **kwargs) -> rclpy Node in `ros_context`, destroyed after the test."""
    from rclpy.node import Node

    nodes: List[Node] = []

    def make(name: str, **kwargs) -> Node:
        node = Node(name, context=ros_context, **kwargs)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.destroy_node()


@pytest.fixture
def spin_until(ros_context) -> Callable[..., bool]:
    """spin_until(nodes, predicate, timeout_s=10) -> bool: spin until predicate() is true."""
    from rclpy.executors import SingleThreadedExecutor

    def spin(nodes, predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
        executor = SingleThreadedExecutor(context=ros_context)
        for node in nodes:
            executor.add_node(node)
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if predicate():
                    return True
                executor.spin_once(timeout_sec=0.05)
            return bool(predicate())
        finally:
            for node in nodes:
                executor.remove_node(node)
            executor.shutdown()

    return spin
