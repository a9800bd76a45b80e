"""Shared by every test."""

import pytest


@pytest.fixture(autouse=True, scope='session')
def _private_cache_dir(tmp_path_factory):
    """Quantized encoders are cached here, never in the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv('ACE_ROS_CACHE_DIR', str(tmp_path_factory.mktemp('ace_ros_cache')))
    yield
    mp.undo()
