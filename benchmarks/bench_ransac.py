"""PnP-RANSAC per call: numpy (`ransac_pnp`) vs torch (`ransac_pnp_torch`) on the CPU, and
on CUDA where there is one (issue 14).

Usage: .venv/bin/python benchmarks/bench_ransac.py [--calls 20] [--outliers 0.5 0.7]
       [--threads 1]

Synthetic frames of ACE's 4800 cells (80 x 60, 640 x 480 image), 1 px pixel noise, outliers
drawn from the scene's bounding box; the localizer's settings (LocalizationConfig: 64
hypotheses, at most 20000 tries), every cell a sampling candidate. Prints ms per call (median
over `calls` frames, after one warm-up call) and the median pose error against the truth.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable, List, Tuple

import numpy as np
import torch

from ace_ros.core import geometry
from ace_ros.core.config import LocalizationConfig
from ace_ros.core.ransac import RansacResult, RansacSettings, ransac_pnp
from ace_ros.core.ransac_torch import ransac_pnp_torch

K = np.array([[525.0, 0.0, 320.0], [0.0, 525.0, 240.0], [0.0, 0.0, 1.0]])


def frame(seed: int, outlier_ratio: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(4800, 2) cell centres with 1 px noise, (4800, 3) scene coordinates, world_from_cam."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:480:8, 0:640:8] + 3.5
    pixels = np.stack([u.ravel(), v.ravel()], axis=1)
    rays = np.c_[pixels, np.ones(len(pixels))] @ np.linalg.inv(K).T
    world_from_cam = geometry.make_pose(
        geometry.axis_angle_to_matrix(rng.normal(size=3)), rng.normal(scale=3.0, size=3))
    points = geometry.transform_points(world_from_cam,
                                       rays * rng.uniform(1, 5, (len(pixels), 1)))
    outlier = rng.random(len(points)) < outlier_ratio
    points[outlier] = rng.uniform(points.min(0), points.max(0), (outlier.sum(), 3))
    return pixels + rng.normal(scale=1.0, size=pixels.shape), points, world_from_cam


def measure(run: Callable[[np.ndarray, np.ndarray, int], RansacResult],
            frames: List[Tuple[np.ndarray, np.ndarray, np.ndarray]], sync: Callable[[], None]
            ) -> Tuple[float, float, float, int]:
    """Median ms per call, median error (cm, deg) and the number of failed calls."""
    run(frames[0][0], frames[0][1], 0)  # warm-up: allocator, CUDA context, kernels
    times, errors, failed = [], [], 0
    for seed, (pixels, points, world_from_cam) in enumerate(frames):
        sync()
        start = time.perf_counter()
        result = run(pixels, points, seed)
        sync()
        times.append(time.perf_counter() - start)
        if not result.success:
            failed += 1
            continue
        errors.append(geometry.pose_error(result.world_from_cam, world_from_cam))
    t_err, r_err = np.median(errors, axis=0) if errors else (np.inf, np.inf)
    return 1e3 * float(np.median(times)), 100 * t_err, r_err, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--calls', type=int, default=20)
    parser.add_argument('--outliers', type=float, nargs='+', default=[0.5, 0.7])
    parser.add_argument('--threads', type=int, default=1, help='torch CPU threads')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = RansacSettings.from_config(LocalizationConfig())

    def numpy_run(pixels, points, seed):
        return ransac_pnp(pixels, points, K, settings, np.random.default_rng(seed))

    def torch_run(device: str):
        def run(pixels, points, seed):
            # The inputs as the localizer has them: points already on the device.
            return ransac_pnp_torch(torch.from_numpy(pixels).to(device),
                                    torch.from_numpy(points).float().to(device), K, settings,
                                    torch.Generator(device).manual_seed(seed))
        return run

    variants = [('numpy', numpy_run, lambda: None), ('torch-cpu', torch_run('cpu'), lambda: None)]
    if torch.cuda.is_available():
        variants.append(('torch-cuda', torch_run('cuda'), torch.cuda.synchronize))
    print(f'{"outliers":>8} {"variant":>10} {"ms/call":>8} {"median err":>16} {"failed":>6}')
    for ratio in args.outliers:
        frames = [frame(1000 + i, ratio) for i in range(args.calls)]
        for name, run, sync in variants:
            ms, t_cm, r_deg, failed = measure(run, frames, sync)
            print(f'{ratio:8.0%} {name:>10} {ms:8.1f} {t_cm:7.2f} cm {r_deg:5.3f} deg '
                  f'{failed:6d}')


if __name__ == '__main__':
    main()
