"""Localization benchmark: per-stage ms per frame of the engine, at the paper's 480 px height.

Usage: .venv/bin/python benchmarks/bench_localization.py MAP SOURCE [--frames 50]
       [--block-split 25:1] [--split test] [any `ace-ros localize` engine flag]
Times `Localizer.localize` on real frames after a warm-up, and prints the mean and median of
each stage (prepare, encoder, head, ransac, total) and the ratio to the reference ACE pipeline
on this CPU (~650 ms per frame, ../shared/ACE_NOTES.md).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from ace_ros.core.config import LocalizationConfig
from ace_ros.cli_args import add_config_flags, config_from_args
from ace_ros.core.localizer import Localizer
from ace_ros.core.runtime import make_runtime
from ace_ros.data.calibration import calibration_inputs
from ace_ros.data.base import Subset, block_split
from ace_ros.data.sources import open_source

REFERENCE_MS = 650.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('map')
    parser.add_argument('source')
    parser.add_argument('--frames', type=int, default=50)
    parser.add_argument('--split')
    parser.add_argument('--block-split')
    add_config_flags(parser, LocalizationConfig)  # --backend, --ransac-sample-fraction, ...
    args = parser.parse_args()
    source = open_source(args.source, split=args.split)
    if args.block_split:
        block, parity = (int(v) for v in args.block_split.split(':'))
        source = Subset(source, block_split(len(source), block, parity))
    frames = [source[i] for i in range(min(args.frames, len(source)))]
    cfg = config_from_args(LocalizationConfig, args)
    localizer = Localizer.from_file(args.map, cfg,
                                    make_runtime(cfg.device, cfg.encoder, calibration_inputs))
    for frame in frames[:3]:  # warm-up: allocator, oneDNN kernel selection
        localizer.localize(frame)
    results = [localizer.localize(frame) for frame in frames]
    print(f'{len(frames)} frames of {frames[0].width}x{frames[0].height}, '
          f'torch {torch.__version__}, {torch.get_num_threads()} threads')
    for stage in ('prepare', 'encoder', 'head', 'ransac', 'total'):
        values = [r.timings_ms[stage] for r in results]
        print(f'{stage:>8}: mean {statistics.mean(values):7.1f} ms   median '
              f'{statistics.median(values):7.1f} ms')
    total = statistics.mean(r.timings_ms['total'] for r in results)
    print(f'speed-up over the reference pipeline (~{REFERENCE_MS:.0f} ms): '
          f'{REFERENCE_MS / total:.2f}x')


if __name__ == '__main__':
    main()
