"""Where a training iteration's time goes: batch gathering, head forward, loss, backward,
optimizer step (issue 13, lever 2: cheaper steps on a CPU).

Usage: .venv/bin/python benchmarks/bench_training_step.py [--preset cpu] [--iterations 60]
       [--images 150] [--batch-size N] [--head-channels N] [--head-blocks N]
       [--no-global-context] [--mixed-precision/--no-mixed-precision] [--json OUT.json]

Fills a buffer with random features (the step's cost does not depend on their values) and
runs `Mapper.train` under torch.profiler, grouping the time by the stage labels the training
loop sets. Prints ms per stage and per iteration, and ns per training cell.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from ace_ros.core import device as device_lib
from ace_ros.core.buffer import EncoderInput
from ace_ros.core.config import mapping_config
from ace_ros.core.mapper import Mapper
from ace_ros.core.network import Encoder
from ace_ros.core.runtime import Runtime

STAGES = ('train.batch', 'train.forward', 'train.loss', 'train.backward', 'train.optimizer')
HEIGHT, WIDTH = 480, 640


def random_buffer(mapper: Mapper, images: int, rng: np.random.Generator):
    """`images` images of random features, each seen from a camera 2 m from the origin."""
    buffer = mapper.new_buffer(images)
    K = np.array([[525.0, 0, WIDTH / 2], [0, 525.0, HEIGHT / 2], [0, 0, 1]])
    valid = np.ones((HEIGHT // 8, WIDTH // 8), bool)
    generator = torch.Generator().manual_seed(0)
    for i in range(images):
        cam_from_world = np.eye(4)
        cam_from_world[:3, 3] = [0.0, 0.0, 2.0 + 0.01 * i]
        encoded = EncoderInput(np.zeros((HEIGHT, WIDTH), np.float32), K, cam_from_world,
                               valid)
        features = torch.from_numpy(rng.standard_normal((512, HEIGHT // 8, WIDTH // 8),
                                                        dtype=np.float32))
        buffer.add_image(encoded, features, mapper.cfg.samples_per_image, generator)
    return buffer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--preset', default='cpu')
    parser.add_argument('--iterations', type=int, default=60)
    parser.add_argument('--images', type=int, default=150)
    parser.add_argument('--batch-size', type=int)
    parser.add_argument('--head-channels', type=int)
    parser.add_argument('--head-blocks', type=int)
    parser.add_argument('--no-global-context', action='store_true')
    parser.add_argument('--mixed-precision', action=argparse.BooleanOptionalAction)
    parser.add_argument('--json')
    args = parser.parse_args()
    overrides = {'max_iterations': args.iterations, 'device': 'cpu', 'triangulate': False}
    for name in ('batch_size', 'head_channels', 'head_blocks', 'mixed_precision'):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.no_global_context:
        overrides['global_context'] = False
    cfg = mapping_config(args.preset, **overrides)
    device = device_lib.resolve_device(cfg.device)
    mapper = Mapper(cfg, Runtime(device, Encoder()))
    buffer = random_buffer(mapper, args.images, np.random.default_rng(0))
    mapper.train(buffer, np.zeros(3))  # warm-up: kernels, allocator
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run = mapper.train(buffer, np.zeros(3))
    wall_s = time.perf_counter() - start  # includes the profiler's own overhead
    totals = {e.key: e.cpu_time_total / 1000.0 for e in prof.key_averages()
              if e.key in STAGES}
    iterations = run.iterations
    batch = min(cfg.batch_size, buffer.size)
    per_iteration = {stage: totals.get(stage, 0.0) / iterations for stage in STAGES}
    step_ms = sum(per_iteration.values())
    result = {
        'device': device_lib.describe(device, 'float'), 'batch_size': batch,
        'head_channels': cfg.head_channels, 'head_blocks': cfg.head_blocks,
        'global_context': cfg.global_context, 'mixed_precision': cfg.mixed_precision,
        'iterations': iterations, 'ms_per_iteration': step_ms,
        'ns_per_cell': 1e6 * step_ms / batch, 'wall_s_profiled': wall_s,
        'stages_ms': per_iteration,
    }
    print(f"{result['device']}: batch {batch}, head {cfg.head_channels} wide, "
          f"{cfg.head_blocks} extra blocks, context {cfg.global_context}, "
          f"mixed precision {cfg.mixed_precision}")
    for stage, ms in per_iteration.items():
        print(f'  {stage:16s} {ms:8.2f} ms  {100 * ms / step_ms:5.1f} %')
    print(f'  {"iteration":16s} {step_ms:8.2f} ms  ({result["ns_per_cell"]:.0f} ns per cell)')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=2)


if __name__ == '__main__':
    main()
