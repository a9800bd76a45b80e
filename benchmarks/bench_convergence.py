"""Mapping convergence: accuracy vs training iterations, for one or more encoders.

Usage: .venv/bin/python benchmarks/bench_convergence.py SOURCE --map-split 25:0
       --query-split 25:1 [--encoders '' random:0] [--iterations 150 400 800 0]
       [--preset cpu] [--json OUT.json]

For each encoder the training buffer is filled once with the preset's settings; then a fresh
head is trained for each iteration budget (the OneCycle schedule and the loss annealing are
compressed to the budget, as `--max-iterations` does for `ace-ros map`; 0 = the preset's
own schedule) and the query frames are localized in it. Prints one row per (encoder, budget):
training seconds, final training reprojection error and the accuracy of `ace-ros evaluate`.
Splits: `--map-split` / `--query-split` are block splits (BLOCK:PARITY, as `--block-split`);
without them the ACE layout's train / test folders are used.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time

import numpy as np

from ace_ros.core import metrics
from ace_ros.core.config import LocalizationConfig, mapping_config
from ace_ros.core.localizer import Localizer, pose_errors
from ace_ros.core.mapper import Mapper, MappingStats, TrainedHead, scene_map_from
from ace_ros.core.runtime import make_runtime
from ace_ros.data.base import Subset, block_split
from ace_ros.data.calibration import calibration_inputs
from ace_ros.data.sources import open_source


def _frames(path: str, split: str, block: str | None) -> list:
    source = open_source(path, split=None if block else split)
    if block:
        size, parity = (int(v) for v in block.split(':'))
        source = Subset(source, block_split(len(source), size, parity))
    return [source[i] for i in range(len(source))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('source')
    parser.add_argument('--map-split', help='BLOCK:PARITY of the mapping frames')
    parser.add_argument('--query-split', help='BLOCK:PARITY of the query frames')
    parser.add_argument('--encoders', nargs='+', default=[''],
                        help="encoder specs ('' = shipped, random:0, a path)")
    parser.add_argument('--iterations', nargs='+', type=int, default=[0])
    parser.add_argument('--preset', default='cpu')
    parser.add_argument('--json')
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')

    mapping = [f for f in _frames(args.source, 'train', args.map_split)
               if f.world_from_cam is not None]
    queries = [f for f in _frames(args.source, 'test', args.query_split)
               if f.world_from_cam is not None]
    base_cfg = mapping_config(args.preset)
    scene_mean = np.mean([f.world_from_cam[:3, 3] for f in mapping], axis=0)
    rows = []
    print(f'{len(mapping)} mapping / {len(queries)} query frames, preset {args.preset}')
    for spec in args.encoders:
        runtime = make_runtime(base_cfg.device, spec, calibration_inputs)
        sha256, label = runtime.encoder_sha256, runtime.encoder_label
        start = time.perf_counter()
        buffer = Mapper(base_cfg, runtime).fill_buffer(mapping)
        buffer_s = time.perf_counter() - start
        for budget in args.iterations:
            # 0: the preset's own schedule; else epochs high enough that the budget, not the
            # buffer size, sets the iterations
            cfg = (dataclasses.replace(base_cfg, encoder=spec) if budget == 0 else
                   dataclasses.replace(base_cfg, encoder=spec, max_iterations=budget,
                                       epochs=1e6))
            mapper = Mapper(cfg, runtime)
            start = time.perf_counter()
            run = mapper.train(buffer, scene_mean)
            head, iterations, last = run.head, run.iterations, run.last
            stats = MappingStats(train_s=time.perf_counter() - start, iterations=iterations,
                                 buffer_size=buffer.size, buffer_s=buffer_s,
                                 final_loss=float(last.loss.detach()),
                                 final_median_error_px=last.median_error_px)
            trained = TrainedHead(head, stats, [f.name for f in mapping],
                                  [mapping[0].K.tolist()])
            scene_map = scene_map_from(trained, mapper.cfg, sha256, label, 'map')
            localizer = Localizer(scene_map, LocalizationConfig(
                encoder=spec, image_height=cfg.image_height), runtime)
            localizer.warm_up(queries[0])
            errors, timings = [], []
            for frame in queries:
                result = localizer.localize(frame)
                errors.append(pose_errors(result, frame.world_from_cam))
                timings.append(result.timings_ms)
            row = {'encoder': label, 'iterations': iterations, 'buffer_size': buffer.size,
                   'buffer_s': buffer_s, 'train_s': stats.train_s,
                   'train_median_px': last.median_error_px,
                   **metrics.summarize(errors, timings)}
            rows.append(row)
            print(f"{label[:40]:>40} {iterations:>6} it {row['train_s']:6.0f} s  "
                  f"train {row['train_median_px']:6.1f} px  "
                  f"10cm/5deg {row['pct_10cm_5deg']:5.1f} %  "
                  f"5cm/5deg {row['pct_5cm_5deg']:5.1f} %  "
                  f"2cm/2deg {row['pct_2cm_2deg']:5.1f} %  median "
                  f"{row['median_t_cm']:.1f} cm / {row['median_r_deg']:.2f} deg  "
                  f"failed {row['n_failed']}", flush=True)
    if args.json:
        with open(args.json, 'w') as file:
            json.dump({'source': args.source, 'preset': args.preset, 'rows': rows}, file,
                      indent=2)


if __name__ == '__main__':
    main()
