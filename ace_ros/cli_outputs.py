"""What the `ace-ros` commands show and write: progress as a bar or log lines, the output
paths checked before a command's work starts (and named after a Ctrl-C), atomic writes."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
import sys
import time
from typing import Any, Dict, FrozenSet, Optional, Tuple, Union

from ace_ros.core.atomic_file import write_atomically
from ace_ros.core.mapper import Progress, eta_text

_logger = logging.getLogger('ace_ros')
#: What `snapshot` tells a file by: inode, size, modification time (ns).
FileIdentity = Tuple[int, int, int]
#: A file's identity, a folder's entries' names and identities, or None: nothing there.
Snapshot = Union[None, FileIdentity, FrozenSet[Tuple[str, FileIdentity]]]


class MappingProgress:
    """Core progress callbacks -> a tqdm bar on a terminal, else log lines with ETA."""

    def __init__(self) -> None:
        self._bars: Dict[str, Any] = {}
        self._interactive = sys.stderr.isatty()
        self._started: Dict[str, float] = {}
        self._first_done: Dict[str, int] = {}
        self._next_log: Dict[str, int] = {}

    def __call__(self, p: Progress) -> None:
        if p.stage not in self._started:
            self._started[p.stage] = time.perf_counter()
            # A resumed run starts mid-way: its rate counts only the work done here.
            self._first_done[p.stage] = p.done
            self._next_log[p.stage] = 0
        if self._interactive:
            self._update_bar(p)
        elif p.done >= self._next_log[p.stage] or p.done == p.total:
            self._next_log[p.stage] = p.done + max(1, p.total // 10)
            elapsed = time.perf_counter() - self._started[p.stage]
            done_here = p.done - self._first_done[p.stage]
            rate = done_here / elapsed if elapsed > 0 and done_here > 0 else float('nan')
            eta = (p.total - p.done) / rate if rate > 0 else float('nan')
            extra = {'train': f', loss {p.loss:.2f}, median error {p.median_error_px:.1f} px',
                     'pretrain': f', loss {p.loss:.2f}, match {p.valid_fraction:.2f}'
                     }.get(p.stage, '')
            rate_text = f'{rate:.2f}/s' if rate > 0 else 'rate unknown'
            _logger.info('%s %d/%d (%s, %s%s)', _STAGE_NAMES[p.stage], p.done, p.total,
                         rate_text, eta_text(eta), extra)

    def _update_bar(self, p: Progress) -> None:
        from tqdm import tqdm
        bar = self._bars.get(p.stage)
        if bar is None:
            bar = self._bars[p.stage] = tqdm(total=p.total, desc=_STAGE_NAMES[p.stage],
                                             unit='it', dynamic_ncols=True, file=sys.stderr)
        bar.total = p.total  # a time budget, or regions trained one by one, revise it
        bar.update(p.done - bar.n)
        if p.stage == 'train':
            bar.set_postfix(loss=f'{p.loss:.2f}', valid=f'{p.valid_fraction:.2f}',
                            err_px=f'{p.median_error_px:.1f}', refresh=False)
        if p.done >= p.total:
            bar.close()

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()


_STAGE_NAMES = {'buffer': 'buffer (encoding images)', 'train': 'training head',
                'pretrain': 'pretraining encoder', 'export': 'writing bag'}


class Outputs:
    """What a command will write, checked before its work starts, so that a bad path fails
    in a second rather than after the whole mapping run; on Ctrl-C, which of them the run
    had changed (`main` says so)."""

    def __init__(self) -> None:
        self._before: Dict[Path, Snapshot] = {}

    def file(self, path: Optional[str], what: str, replace: bool = False) -> None:
        """`path` (skipped when empty) must be a file this process can write: its folder
        exists and is writable and it is no directory. `replace`: it is written atomically
        (a new file moved over the old one), so an existing read-only file is no obstacle.

        Raises:
            ValueError: naming `what` and `path`.
        """
        if not path:
            return
        file = Path(path)
        folder = file.absolute().parent
        if file.is_dir():
            raise ValueError(f'{what} {path} is a directory; give a file path')
        if not folder.is_dir():
            raise ValueError(f'{what} {path}: folder {folder} does not exist')
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ValueError(f'{what} {path}: folder {folder} is not writable')
        if not replace and file.exists() and not os.access(file, os.W_OK):
            raise ValueError(f'{what} {path} exists and is not writable')
        self._before[file] = snapshot(file)

    def folder(self, path: Optional[str], what: str) -> None:
        """`path` (skipped when empty) must be a writable folder, or one that can be made:
        no file, and its nearest existing parent a writable folder.

        Raises:
            ValueError: naming `what` and `path`.
        """
        if not path:
            return
        folder = Path(path)
        existing = folder.absolute()
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise ValueError(f'{what} {path}: {existing} is not a folder')
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ValueError(f'{what} {path}: folder {existing} is not writable')
        self._before[folder] = snapshot(folder)

    def note(self) -> str:
        """After an interruption: what was written, or that nothing was."""
        if not self._before:
            return ''
        changed = [str(p) for p, before in self._before.items() if snapshot(p) != before]
        if changed:
            return 'written before the interruption: ' + ', '.join(changed)
        return 'nothing was written to ' + ' or '.join(str(p) for p in self._before)


def snapshot(path: Path) -> Snapshot:
    """What `path` is now (None: nothing), to tell later whether it was written."""
    def identity(st: os.stat_result) -> FileIdentity:
        return st.st_ino, st.st_size, st.st_mtime_ns

    try:
        if path.is_dir():
            with os.scandir(path) as entries:
                return frozenset((e.name, identity(e.stat())) for e in entries)
        return identity(path.stat())
    except OSError:
        return None


def write_json(path: Optional[str], data: Dict[str, Any]) -> None:
    if path:
        write_atomically(Path(path), lambda tmp: tmp.write_text(
            json.dumps(data, indent=2, sort_keys=True) + '\n'))
