"""Online mapping benchmark: a drive replayed into `OnlineMappingSession` at wall-clock pace.

Usage: .venv/bin/python benchmarks/bench_online_mapping.py SCENE --queries QUERIES
       [--split train] [--block-split 50:0] [--query-split test] [--preset cpu]
       [--drive-s 300] [--train-while-collecting] [--time-budget-s S] [--map out.ace]
       [--json out.json]

What the mapping node does with a live camera, without ROS (the node is a thin adapter on
this session): the frames of SCENE (any reader `ace-ros map` takes; `--split`,
`--block-split` as there) arrive evenly over `--drive-s` seconds of wall time, each image
with its pose at the same stamp, every one a keyframe; then `finish` trains and writes the
map under the preset's time budget (counted from `finish`, as in the node), and the map is
evaluated on QUERIES like `ace-ros evaluate`.

Reported: the drive (s), keyframes, iterations trained while collecting and their median
reprojection error at the end of the drive, finish -> map (s), the iterations after
`finish`, and accuracy (within 10cm/5deg, 5cm/5deg, 2cm/2deg, median). Compare the same
drive with and without `--train-while-collecting` (issue 13, lever 3).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ace_ros.cli import run_evaluate  # noqa: E402
from ace_ros.core.config import LocalizationConfig, mapping_config  # noqa: E402
from ace_ros.core.online_mapping import OnlineMappingConfig, OnlineMappingSession  # noqa: E402
from ace_ros.core.runtime import make_runtime  # noqa: E402
from ace_ros.data.ace_layout import write_ace_scene  # noqa: E402
from ace_ros.data.base import Subset, block_split  # noqa: E402
from ace_ros.data.calibration import calibration_inputs  # noqa: E402
from ace_ros.data.sources import open_source  # noqa: E402


def _frames(path: str, split: str, blocks: str):
    source = open_source(path, split=split or None)
    if blocks:
        block, parity = (int(v) for v in blocks.split(':'))
        source = Subset(source, block_split(len(source), block, parity))
    return source


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('scene')
    parser.add_argument('--queries', required=True)
    parser.add_argument('--split', default='train')
    parser.add_argument('--block-split', default='')
    parser.add_argument('--query-split', default='test')
    parser.add_argument('--preset', default='cpu')
    parser.add_argument('--drive-s', type=float, default=300.0,
                        help='wall-clock seconds over which the frames arrive')
    parser.add_argument('--train-while-collecting', action='store_true')
    parser.add_argument('--time-budget-s', type=float, default=None,
                        help="seconds from finish to the map (default: the preset's)")
    parser.add_argument('--map', default='online.ace')
    parser.add_argument('--json', default='')
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')

    frames = _frames(args.scene, args.split, args.block_split)
    queries = _frames(args.queries, args.query_split, '')
    # Every frame a keyframe, as `ace-ros map` uses every frame: the comparison is then
    # about training, not about the keyframe policy.
    online = OnlineMappingConfig(map_path=args.map, save_keyframes_before_training=False,
                                 max_keyframes=max(2, len(frames)), min_translation_m=0.0,
                                 min_rotation_deg=0.0,
                                 train_while_collecting=args.train_while_collecting)
    overrides = {} if args.time_budget_s is None else {'time_budget_s': args.time_budget_s}
    cfg = mapping_config(args.preset, **overrides)
    runtime = make_runtime(cfg.device, cfg.encoder, calibration_inputs)
    session = OnlineMappingSession(cfg, online, 'map', runtime=runtime,
                                   write_scene=write_ace_scene)
    period_s = args.drive_s / len(frames)
    start = time.perf_counter()
    next_report = start + 30.0
    try:
        for i, frame in enumerate(frames):
            due = start + i * period_s
            while time.perf_counter() < due:
                time.sleep(min(0.05, due - time.perf_counter()))
            stamp_ns = 1_000_000_000 + int(round(i * period_s * 1e9))
            session.add_pose(stamp_ns, frame.world_from_cam, 'map')
            session.add_image(frame.image, frame.K, stamp_ns)
            if time.perf_counter() >= next_report:
                next_report += 30.0
                s = session.status()
                print(f'[{time.perf_counter() - start:5.0f} s] {s.keyframes} keyframes, '
                      f'{s.encoded} encoded, {s.queued} queued, {s.warm_iterations} '
                      f'iterations trained, median {s.warm_median_error_px:.1f} px',
                      flush=True)
        drive_s = time.perf_counter() - start
        at_finish = session.status()
        finish_start = time.perf_counter()
        result = session.finish()
        finish_s = time.perf_counter() - finish_start
    finally:
        session.close()
    summary = run_evaluate(args.map, queries, LocalizationConfig())
    stats = result.stats
    report = {
        'drive_s': drive_s, 'keyframes': result.keyframes,
        'queued_at_finish': at_finish.queued,
        'warm_iterations': stats.warm_iterations, 'warm_s': stats.warm_s,
        'warm_median_error_px': at_finish.warm_median_error_px,
        'finish_to_map_s': finish_s, 'iterations': stats.iterations,
        'train_s': stats.train_s, 'final_median_error_px': stats.final_median_error_px,
        'train_while_collecting': online.train_while_collecting, 'preset': args.preset,
        **summary}
    for key in ('drive_s', 'keyframes', 'queued_at_finish', 'warm_iterations',
                'warm_median_error_px', 'finish_to_map_s', 'iterations',
                'final_median_error_px', 'pct_10cm_5deg', 'pct_5cm_5deg', 'pct_2cm_2deg',
                'median_t_cm', 'median_r_deg', 'n_failed'):
        value = report.get(key, math.nan)
        print(f'{key:24s} {value:.1f}' if isinstance(value, float) else f'{key:24s} {value}')
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
