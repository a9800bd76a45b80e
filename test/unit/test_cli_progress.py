"""The CLI's progress lines when stderr is not a terminal (logs, CI, nohup)."""

from __future__ import annotations

import logging
import re

from ace_ros import cli
from ace_ros.core.mapper import Progress


def _lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == 'ace_ros']


def test_a_resumed_stage_reports_the_rate_of_the_work_done_here(caplog, monkeypatch):
    clock = iter([100.0, 100.0, 110.0])  # start, first line, second line
    monkeypatch.setattr(cli.time, 'perf_counter', lambda: next(clock))
    monkeypatch.setattr(cli.sys.stderr, 'isatty', lambda: False, raising=False)
    progress = cli._MappingProgress()
    with caplog.at_level(logging.INFO, logger='ace_ros'):
        progress(Progress('pretrain', 800, 4000))   # resumed at step 800, clock 100 s
        progress(Progress('pretrain', 1200, 4000))  # 400 steps in 10 s
    first, second = _lines(caplog)
    assert 'rate unknown' in first and 'ETA unknown' in first, first
    rate, eta = map(float, re.search(r'\(([\d.]+)/s, ETA ([\d.]+) s', second).groups())
    assert rate == 40.0
    assert eta == 70.0  # 2800 steps left at 40 per second


def test_eta_text_is_readable_before_a_rate_exists():
    from ace_ros.core.mapper import eta_text
    assert eta_text(43.4) == 'ETA 43 s'
    assert eta_text(float('nan')) == 'ETA unknown' and eta_text(float('inf')) == 'ETA unknown'
