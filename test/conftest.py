"""Shared by every test."""

import pytest


@pytest.fixture(autouse=True, scope='session')
def _private_cache_dir(tmp_path_factory):
    """Quantized encoders are cached here, never in the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv('ACE_ROS_CACHE_DIR', str(tmp_path_factory.mktemp('ace_ros_cache')))
    yield
    mp.undo()


@pytest.fixture
def fill_buffer_deadlines(monkeypatch):
    """The `deadline` of every `Mapper.fill_buffer` call, in order (the time budget's
    buffer share as the mapper computed it)."""
    from ace_ros.core.mapper import Mapper
    deadlines, fill_buffer = [], Mapper.fill_buffer

    def recording(self, frames, progress=None, buffer=None, passes_done=0, deadline=None,
                  points=None):
        deadlines.append(deadline)
        return fill_buffer(self, frames, progress, buffer, passes_done, deadline, points)

    monkeypatch.setattr(Mapper, 'fill_buffer', recording)
    return deadlines
