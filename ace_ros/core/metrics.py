"""Relocalization accuracy and timing summaries (the numbers ACE papers report)."""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np

#: (name, translation threshold in m, rotation threshold in deg)
THRESHOLDS: Tuple[Tuple[str, float, float], ...] = (
    ('pct_10cm_5deg', 0.10, 5.0), ('pct_5cm_5deg', 0.05, 5.0),
    ('pct_2cm_2deg', 0.02, 2.0), ('pct_1cm_1deg', 0.01, 1.0))
STAGES = ('prepare', 'encoder', 'head', 'ransac')


def summarize(errors: Sequence[Tuple[float, float]],
              timings_ms: Iterable[Dict[str, float]]) -> Dict[str, float]:
    """Accuracy and speed over a query set.

    Args:
        errors: per frame (translation error m, rotation error deg); a failed frame is
            (inf, inf) and counts as infinitely wrong.
        timings_ms: per frame stage timings as in LocalizationResult.timings_ms.

    Returns:
        n_frames, n_failed, pct_* (percent of all frames), median_t_cm, median_r_deg,
        ms_per_frame (mean end to end) and <stage>_ms means.
    """
    t_err = np.array([e[0] for e in errors], dtype=np.float64)
    r_err = np.array([e[1] for e in errors], dtype=np.float64)
    n = len(errors)
    summary: Dict[str, float] = {'n_frames': n, 'n_failed': int(np.sum(~np.isfinite(t_err)))}
    for name, t_max, r_max in THRESHOLDS:
        hits = np.sum((t_err <= t_max) & (r_err <= r_max))
        summary[name] = 100.0 * hits / n if n else math.nan
    # Medians with failures as +inf, as is usual in the literature.
    summary['median_t_cm'] = float(np.median(t_err) * 100.0) if n else math.nan
    summary['median_r_deg'] = float(np.median(r_err)) if n else math.nan
    timings: List[Dict[str, float]] = list(timings_ms)
    summary['ms_per_frame'] = _mean(t.get('total', math.nan) for t in timings)
    for stage in STAGES:
        summary[f'{stage}_ms'] = _mean(t.get(stage, math.nan) for t in timings)
    return summary


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return float(np.mean(values)) if values else math.nan


def format_table(summary: Dict[str, float]) -> str:
    """A small human-readable table of a summary."""
    rows = [('frames', f"{summary['n_frames']} ({summary['n_failed']} failed)")]
    rows += [(name.replace('pct_', '').replace('_', ' / '), f'{summary[name]:.1f} %')
             for name, _, _ in THRESHOLDS]
    rows += [('median error', f"{summary['median_t_cm']:.1f} cm, "
                              f"{summary['median_r_deg']:.2f} deg"),
             ('time per frame', f"{summary['ms_per_frame']:.1f} ms (" + ', '.join(
                 f"{s} {summary[f'{s}_ms']:.1f}" for s in STAGES) + ')')]
    width = max(len(r[0]) for r in rows)
    return '\n'.join(f'{k:<{width}}  {v}' for k, v in rows)
