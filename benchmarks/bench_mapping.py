"""Mapping benchmark: render an N-frame synthetic room, map it, print per-stage times.

Usage: .venv/bin/python benchmarks/bench_mapping.py [--frames 500] [--preset cpu]
       [--queries 100] [--json OUT.json]
Prints render / buffer / training seconds, iterations per second, map size, peak memory,
and (with --queries) localization accuracy and per-stage ms on held-out frames.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import tempfile
import time

from ace_ros import cli
from ace_ros.core.config import LocalizationConfig, mapping_config
from ace_ros.data.synthetic import SyntheticSceneConfig, generate_frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--frames', type=int, default=500)
    parser.add_argument('--queries', type=int, default=100)
    parser.add_argument('--preset', default='cpu')
    parser.add_argument('--encoder', default='')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--json')
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')

    scene = SyntheticSceneConfig(seed=args.seed, n_train=args.frames, n_test=args.queries)
    start = time.perf_counter()
    train = list(generate_frames(scene, 'train'))
    render_s = time.perf_counter() - start
    map_path = os.path.join(tempfile.mkdtemp(prefix='ace_bench_'), 'room.ace')
    map_cfg = mapping_config(args.preset, encoder=args.encoder)
    report = cli.run_map(train, map_cfg, map_path)
    result = {'frames': args.frames, 'preset': args.preset, 'render_s': render_s,
              **{k: report[k] for k in ('wall_s', 'buffer_s', 'train_s', 'iterations',
                                        'buffer_size', 'map_bytes', 'device')}}
    result['buffer_ms_per_image'] = 1000 * report['buffer_s'] / report['buffer_images']
    result['train_ms_per_iteration'] = 1000 * report['train_s'] / report['iterations']
    if args.queries:
        test = list(generate_frames(scene, 'test'))
        # Localize at the height the preset mapped at (the tiny preset maps at 240 px).
        result.update(cli.run_evaluate(map_path, test, LocalizationConfig(
            encoder=args.encoder, image_height=map_cfg.image_height)))
    result['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for key, value in result.items():
        print(f'{key:>24}: {value:.2f}' if isinstance(value, float) else f'{key:>24}: {value}')
    if args.json:
        with open(args.json, 'w') as file:
            json.dump(result, file, indent=2)


if __name__ == '__main__':
    main()
