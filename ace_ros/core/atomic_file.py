"""Atomic file writes: the one way map files, reports and checkpoints reach the disk.

The bytes go to a temporary file beside the target, are flushed and fsynced, then
``os.replace`` puts them in place and the directory is fsynced. An interruption (an error,
Ctrl-C) leaves the old file, or none, never half of one, and no temporary file. A new file
gets mode 0644, an existing one keeps its mode.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import Any, Callable

_logger = logging.getLogger(__name__)


def write_atomically(path: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    """`write(tmp)` a temporary file beside `path`, then move it to `path` durably.

    Raises:
        FileNotFoundError: if the directory of `path` does not exist.
        OSError: if writing fails (e.g. disk full); `path` is then as it was.
    """
    path = Path(path)
    directory = path.absolute().parent
    if not directory.is_dir():
        raise FileNotFoundError(f'{path}: cannot write: directory {directory} does not exist')
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o644
    fd, name = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=directory)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, 'rb+') as written:
            os.fsync(written.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            tmp.unlink()
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable; best effort, as not every platform can fsync a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        _logger.debug('fsync of directory %s failed: %s', directory, e)
