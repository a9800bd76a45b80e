"""GPU benchmark (issue 14): per-stage times, accuracy and memory of mapping and localization.

Usage (from the source tree, no venv needed on a bare CUDA machine):

    PYTHONPATH=. python benchmarks/bench_gpu.py DATASET [--device cuda] [--queries N]
        [--map-frames N] [--json] [--smoke]

Maps DATASET's train split twice on `--device`: with the `default` and the `gpu-fast`
presets (fewer buffer passes and iterations), float encoder features in both. Localizes up
to `--queries` frames of the test split (or, where there is none, every 10th train frame,
held out of mapping) with each map: on the device with the torch RANSAC, on the device with
the numpy RANSAC, and on the CPU (torch backend, numpy RANSAC). Prints per-stage times
(decode, CPU vs batched-device augmentation, encode, train step, RANSAC, end to end per
frame), accuracy (within 10cm/5deg, 5cm/5deg, 2cm/2deg, 1cm/1deg), peak GPU memory and the
CPU/device ratio. `--json` prints one JSON object instead. `--smoke`: tiny images and a few
iterations, to check the script itself on a CPU in a minute or two.

It imports only torch, numpy, OpenCV, safetensors and PyYAML (no OpenVINO, rosbags or
rclpy): the encoder precision is 'float' and the localization backend 'torch'. Without
Pillow, image sizes are read by OpenCV (a full decode) instead of from the file header.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch

from ace_ros import report
from ace_ros.core import geometry
from ace_ros.core.augment_torch import augment_batch
from ace_ros.core.buffer import encode, prepare_image
from ace_ros.core.config import LocalizationConfig, mapping_config, MappingConfig
from ace_ros.core.device import autocast
from ace_ros.core.localizer import Localizer
from ace_ros.core.mapper import Mapper, scene_map_from
from ace_ros.core.network import image_to_network_input
from ace_ros.core.runtime import make_runtime, Runtime
from ace_ros.core.types import Frame
from ace_ros.data.base import Subset
from ace_ros.data.sources import open_source

#: Both settings: float features (int8 needs OpenVINO, a CPU-only path).
COMMON: Dict[str, Any] = {'encoder_precision': 'float'}
#: --smoke: tiny images, buffer and schedule, on top of the settings above.
SMOKE: Dict[str, Any] = {'image_height': 120, 'buffer_size': 20_000, 'samples_per_image': 256,
                         'batch_size': 512, 'max_buffer_passes': 2}
SMOKE_ITERATIONS = {'default': 300, 'gpu-fast': 150}
#: Frames in the augmentation timing batch, and how many of them are encoded one by one.
TIMING_BATCH = 32
TIMING_ENCODES = 8


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int = 3) -> float:
    """Median seconds of `fn()` over `repeats` runs after one warm-up run."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _use_opencv_for_image_sizes() -> None:
    """The dataset readers read image sizes with Pillow; without it, with OpenCV."""
    try:
        import PIL  # noqa: F401
        return
    except ImportError:
        pass
    from ace_ros.data import ace_layout, base, colmap, tum

    def image_size(path: Any) -> Tuple[int, int]:
        image = base.load_rgb(path)
        return int(image.shape[1]), int(image.shape[0])
    for module in (ace_layout, base, colmap, tum):
        module.image_size = image_size  # type: ignore[attr-defined]


def load_frames(dataset: str, n_queries: int, n_map: int
                ) -> Tuple[List[Frame], List[Frame], float, str]:
    """Decoded mapping frames, queries, mean decode ms per frame, and where the queries
    came from."""
    train = open_source(dataset, split='train')
    try:
        test = open_source(dataset, split='test')
        where = 'test split'
    except (ValueError, FileNotFoundError):
        test = None
    if test is None or not len(test):
        held = list(range(5, len(train), 10))
        test = Subset(train, held)
        train = Subset(train, [i for i in range(len(train)) if i not in set(held)])
        where = 'every 10th train frame (held out of mapping)'
    map_index = range(len(train)) if not n_map else np.linspace(
        0, len(train) - 1, min(n_map, len(train))).round().astype(int)
    query_index = np.linspace(0, len(test) - 1, min(n_queries, len(test))).round().astype(int)
    start = time.perf_counter()
    frames = [_decoded(train[int(i)]) for i in map_index]
    queries = [_decoded(test[int(i)]) for i in query_index]
    decode_ms = 1000 * (time.perf_counter() - start) / (len(frames) + len(queries))
    return frames, queries, decode_ms, where


def _decoded(frame: Frame) -> Frame:
    """An eager copy: a LazyFrame decodes again whenever its image was let go."""
    return Frame(frame.name, np.ascontiguousarray(frame.image), frame.K, frame.world_from_cam,
                 frame.stamp)


def stage_times(frames: Sequence[Frame], cfg: MappingConfig, runtime: Runtime,
                batch_size: int = TIMING_BATCH) -> Dict[str, float]:
    """ms per image of augmenting (CPU, and batched on the device) and encoding."""
    device = runtime.device
    size = (frames[0].height, frames[0].width)
    batch = [f for f in frames if (f.height, f.width) == size][:batch_size]
    rng = np.random.default_rng(0)
    cpu_s = _timed(lambda: [prepare_image(f, cfg.image_height, rng, cfg) for f in batch],
                   device)
    host = np.stack([f.image for f in batch])
    K = np.stack([f.K for f in batch])
    cam_from_world = np.stack([geometry.invert_pose(f.world_from_cam) for f in batch])
    upload_s = _timed(lambda: torch.from_numpy(host).to(device), device)
    images = torch.from_numpy(host).to(device)
    generator = torch.Generator(device).manual_seed(0)
    device_s = _timed(lambda: augment_batch(images, K, cam_from_world, cfg.image_height, cfg,
                                            generator), device)
    augmented = augment_batch(images, K, cam_from_world, cfg.image_height, cfg, generator)
    grays = [augmented.item(i).gray for i in range(min(TIMING_ENCODES, len(batch)))]
    encode_s = _timed(lambda: [encode(runtime.encoder, g, device, cfg.mixed_precision)
                               for g in grays], device)
    # What batching the encoder would give: the unaugmented images (one size) at once.
    plain = augment_batch(images[:len(grays)], K[:len(grays)], cam_from_world[:len(grays)],
                          cfg.image_height).gray[:, None]
    batched_s = _timed(lambda: _encode_batch(runtime, plain, cfg.mixed_precision), device)
    n = len(batch)
    return {'batch': n, 'augment_cpu_ms': 1000 * cpu_s / n,
            'upload_ms': 1000 * upload_s / n, 'augment_device_ms': 1000 * device_s / n,
            'encoded': len(grays), 'encode_ms': 1000 * encode_s / len(grays),
            'encode_batched_ms': 1000 * batched_s / len(grays)}


def _encode_batch(runtime: Runtime, gray: torch.Tensor, mixed_precision: bool
                  ) -> torch.Tensor:
    """(B, 1, H, W) gray on the device -> (B, 512, H/8, W/8), as `buffer.encode` per image."""
    image = image_to_network_input(gray).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(runtime.device, mixed_precision):
        return runtime.encoder(image)


def map_scene(frames: Sequence[Frame], cfg: MappingConfig, runtime: Runtime
              ) -> Tuple[Any, Dict[str, float]]:
    """The map and its mapping figures: buffer and training times, peak GPU memory."""
    device = runtime.device
    if device.type == 'cuda':
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    mapper = Mapper(cfg, runtime)
    start = time.perf_counter()
    trained = mapper.map(frames)
    _sync(device)
    total_s = time.perf_counter() - start
    stats = trained.stats
    figures = {
        'total_s': total_s, 'buffer_s': stats.buffer_s, 'train_s': stats.train_s,
        'buffer_images': stats.buffer_images, 'buffer_cells': stats.buffer_size,
        'iterations': stats.iterations,
        'buffer_ms_per_image': 1000 * stats.buffer_s / max(1, stats.buffer_images),
        'train_step_ms': 1000 * stats.train_s / max(1, stats.iterations),
        'final_median_error_px': stats.final_median_error_px}
    if device.type == 'cuda':
        figures['peak_gpu_mib'] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    scene_map = scene_map_from(trained, mapper.cfg, runtime.encoder_sha256,
                               runtime.encoder_label, 'map')
    return scene_map, figures


def localize(localizer: Localizer, queries: Sequence[Frame], on_device: bool
             ) -> Dict[str, float]:
    """Accuracy and per-stage ms per frame (`report.summarize`) over `queries`."""
    localizer.ransac_on_device = on_device
    for frame in queries[:2]:  # warm-up: allocator, kernel choice
        localizer.localize(frame)
    cuda = localizer.device.type == 'cuda'
    if cuda:
        torch.cuda.reset_peak_memory_stats(localizer.device)
    records = [report.evaluate_frame(i, frame, localizer.localize(frame))
               for i, frame in enumerate(queries)]
    summary = report.summarize(records)
    if cuda:
        summary['peak_gpu_mib'] = torch.cuda.max_memory_allocated(localizer.device) / 2 ** 20
    return summary


def run(args: argparse.Namespace) -> Dict[str, Any]:
    _use_opencv_for_image_sizes()
    runtime = make_runtime(args.device, args.encoder)
    device = runtime.device
    frames, queries, decode_ms, where = load_frames(args.dataset, args.queries,
                                                    args.map_frames)
    settings = {'default': dict(COMMON), 'gpu-fast': dict(COMMON)}
    if args.smoke:
        for name, overrides in settings.items():
            overrides.update(SMOKE, max_iterations=SMOKE_ITERATIONS[name])
    out: Dict[str, Any] = {
        'device': str(device), 'torch': torch.__version__, 'threads': torch.get_num_threads(),
        'gpu': torch.cuda.get_device_name(device) if device.type == 'cuda' else None,
        'dataset': args.dataset, 'map_frames': len(frames), 'queries': len(queries),
        'queries_from': where, 'frame_size': [frames[0].width, frames[0].height],
        'decode_ms': decode_ms, 'overrides': settings, 'maps': {}}
    # Augmentation and encoding do not depend on the schedule: timed once.
    out['stages'] = stage_times(frames, mapping_config('default', **settings['default']),
                                runtime, 8 if args.smoke else TIMING_BATCH)
    cpu_runtime = runtime if device.type == 'cpu' else make_runtime('cpu', args.encoder)
    for name, overrides in settings.items():
        cfg = mapping_config(name, **overrides)
        result: Dict[str, Any] = {}
        scene_map, result['mapping'] = map_scene(frames, cfg, runtime)
        loc_cfg = LocalizationConfig(device=str(device), backend='torch')
        localizer = Localizer(scene_map, loc_cfg, runtime)
        result['device_torch_ransac'] = localize(localizer, queries, True)
        result['device_numpy_ransac'] = localize(localizer, queries, False)
        if device.type == 'cpu':
            result['cpu'] = result['device_numpy_ransac']
        else:
            cpu_localizer = Localizer(scene_map, LocalizationConfig(device='cpu',
                                                                    backend='torch'),
                                      cpu_runtime)
            result['cpu'] = localize(cpu_localizer, queries, False)
        result['cpu_over_device'] = (result['cpu']['ms_per_frame']
                                     / result['device_torch_ransac']['ms_per_frame'])
        out['maps'][name] = result
    out['imported_forbidden'] = forbidden_modules()
    return out


def forbidden_modules() -> List[str]:
    """Modules a bare CUDA machine does not have that are loaded now."""
    return sorted(name for name in sys.modules
                  if name.split('.')[0] in ('openvino', 'nncf', 'rosbags', 'rclpy'))


def print_report(out: Dict[str, Any]) -> None:
    gpu = f" ({out['gpu']})" if out['gpu'] else ''
    print(f"device {out['device']}{gpu}, torch {out['torch']}, {out['threads']} threads")
    print(f"{out['dataset']}: {out['map_frames']} mapping frames of "
          f"{out['frame_size'][0]}x{out['frame_size'][1]}, {out['queries']} queries from the "
          f"{out['queries_from']}; decode {out['decode_ms']:.1f} ms/frame")
    s = out['stages']
    print(f"augment: CPU {s['augment_cpu_ms']:.2f} ms/image, device (a batch of "
          f"{s['batch']}) {s['augment_device_ms']:.2f} ms/image + upload {s['upload_ms']:.2f}; "
          f"encode {s['encode_ms']:.2f} ms/image one by one, {s['encode_batched_ms']:.2f} "
          f"batched ({s['encoded']} images)")
    for name, result in out['maps'].items():
        print(f"\n== {name}: mapping_config({name!r}, **{out['overrides'][name]})")
        m = result['mapping']
        peak = f", peak GPU memory {m['peak_gpu_mib']:.0f} MiB" if 'peak_gpu_mib' in m else ''
        print(f"mapping {m['total_s']:.1f} s: buffer {m['buffer_s']:.1f} s "
              f"({m['buffer_images']} images, {m['buffer_ms_per_image']:.1f} ms each, "
              f"{m['buffer_cells']} cells), train {m['train_s']:.1f} s ({m['iterations']} "
              f"iterations, {m['train_step_ms']:.2f} ms each){peak}")
        paths = [('device_torch_ransac', 'device, torch RANSAC'),
                 ('device_numpy_ransac', 'device, numpy RANSAC')]
        if out['device'] != 'cpu':
            paths.append(('cpu', 'CPU, numpy RANSAC'))
        for path, label in paths:
            r = result[path]
            print(f"{label:>22}: {r['pct_10cm_5deg']:5.1f} / {r['pct_5cm_5deg']:5.1f} / "
                  f"{r['pct_2cm_2deg']:5.1f} / {r['pct_1cm_1deg']:5.1f} % within 10cm5deg/"
                  f"5cm5deg/2cm2deg/1cm1deg; {r['ms_per_frame']:.1f} ms/frame (prepare "
                  f"{r['prepare_ms']:.1f}, encoder {r['encoder_ms']:.1f}, head "
                  f"{r['head_ms']:.1f}, ransac {r['ransac_ms']:.1f})"
                  + (f", peak GPU memory {r['peak_gpu_mib']:.0f} MiB" if 'peak_gpu_mib' in r
                     else ''))
        print(f"CPU (numpy RANSAC) / device (torch RANSAC) time per frame: "
              f"{result['cpu_over_device']:.2f}x")
    if out['imported_forbidden']:
        print(f"WARNING: imported {', '.join(out['imported_forbidden'])}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('dataset', help='scene folder (any layout `ace-ros map` reads)')
    parser.add_argument('--device', default='auto', help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    parser.add_argument('--queries', type=int, default=100, help='query frames at most')
    parser.add_argument('--map-frames', type=int, default=0,
                        help='mapping frames at most, evenly spaced (0: all)')
    parser.add_argument('--encoder', default='', help="weights path; '' = the shipped one")
    parser.add_argument('--json', action='store_true', help='print one JSON object')
    parser.add_argument('--smoke', action='store_true',
                        help='tiny images and schedules: checks the script on a CPU')
    args = parser.parse_args(argv)
    out = run(args)
    if args.json:
        print(json.dumps(out, indent=1, default=float))
    else:
        print_report(out)


if __name__ == '__main__':
    main()
