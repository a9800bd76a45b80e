"""`ace-ros`: map, localize and evaluate offline from dataset folders or ROS bags (no ROS
needed); export datasets as bags; play bags over ROS 2 (`play` needs rclpy)."""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, \
    TYPE_CHECKING

import numpy as np

from ace_ros import cli_args
from ace_ros.cli_args import config_from_args
from ace_ros.cli_outputs import (
    MappingProgress as _MappingProgress, Outputs as _Outputs,
    write_atomically as _write_atomically, write_json as _write_json)
from ace_ros.core import metrics
from ace_ros.core.config import LocalizationConfig, MappingConfig
from ace_ros.core.mapper import Progress as _Progress
from ace_ros.core.types import Frame, LocalizationResult

if TYPE_CHECKING:
    from ace_ros.core.runtime import Runtime
    from ace_ros.data.base import FrameSource
    from ace_ros.report import FrameEvaluation

_logger = logging.getLogger('ace_ros')
#: Flags that select what is read from a ROS bag SOURCE -> RosbagSource arguments.
_BAG_FLAGS = {'image_topic': 'image_topic', 'camera_info_topic': 'camera_info_topic',
              'pose_topic': 'pose_topic', 'world_frame': 'world_frame',
              'camera_frame': 'camera_frame', 'max_pose_gap': 'max_pose_gap_s'}


def _check_settings(device: str, **encoders: str) -> None:
    """Refuse at once, before frames are read: a device that is not there (CUDA asked for
    where none is available, cuda:N out of range) and encoder files that cannot be read;
    `encoders` maps a setting's name to its spec.

    Raises:
        ValueError: naming the device or the file.
    """
    from ace_ros.core.device import resolve_device
    from ace_ros.core.weights import load_encoder_state, RANDOM_ENCODER
    resolve_device(device)
    for name, spec in encoders.items():
        if spec == '' or spec == RANDOM_ENCODER or spec.startswith(RANDOM_ENCODER + ':'):
            continue  # built in; a bad seed is refused when it is built
        flag = '--' + name.replace('_', '-')
        if not Path(spec).is_file():
            raise ValueError(f'{flag} {spec}: no such file')
        if not os.access(spec, os.R_OK):
            raise ValueError(f'{flag} {spec}: not readable')
        load_encoder_state(spec)  # ~22 MB: its keys and shapes are checked now, not later


def _open_frames(args: argparse.Namespace) -> FrameSource:
    from ace_ros.data.base import Subset, block_split
    from ace_ros.data.sources import detect_format, open_source
    fmt = detect_format(args.source) if args.format == 'auto' else args.format
    bag_options = {arg: getattr(args, flag) for flag, arg in _BAG_FLAGS.items()
                   if getattr(args, flag, None) is not None}
    if bag_options and fmt != 'rosbag':
        flags = ', '.join('--' + f.replace('_', '-') for f in _BAG_FLAGS
                          if getattr(args, f, None) is not None)
        raise ValueError(f'{flags} apply to ROS bags only; {args.source} is {fmt}')
    source = open_source(args.source, fmt=fmt, split=args.split, **bag_options)
    if args.block_split:
        try:
            block, parity = (int(v) for v in args.block_split.split(':'))
        except ValueError:
            raise ValueError(f"--block-split expects N:PARITY like 25:0, got "
                             f"'{args.block_split}'") from None
        source = Subset(source, block_split(len(source), block, parity))
    if len(source) == 0:
        raise ValueError(f'{args.source}: no frames selected')
    return source


def _pose_frame(source: FrameSource) -> Optional[str]:
    """The frame a bag's poses are given in (None for dataset folders)."""
    while hasattr(source, 'source'):  # unwrap Subsets
        source = source.source
    return getattr(source, 'pose_frame', None) or None


def _load_all(source: Iterable[Frame]) -> List[Frame]:
    from tqdm import tqdm
    return [f for f in tqdm(source, desc='reading frames', unit='img', file=sys.stderr,
                            disable=None, mininterval=1.0)]


def _runtime(cfg: MappingConfig | LocalizationConfig) -> 'Runtime':
    """The job's runtime (`cfg`'s device and encoder), able to quantize an int8 encoder."""
    from ace_ros.core.runtime import make_runtime
    from ace_ros.data.calibration import calibration_inputs
    return make_runtime(cfg.device, cfg.encoder, calibration_inputs)


def run_map(frames: Sequence[Frame], cfg: MappingConfig, output: str,
            world_frame_id: str = 'map') -> Dict[str, Any]:
    """Map `frames`, save atomically to `output`; returns the report dict."""
    from ace_ros.core.mapfile import save_map
    from ace_ros.core.mapper import map_frames
    start = time.perf_counter()
    progress = _MappingProgress()
    try:
        result = map_frames(frames, cfg, world_frame_id, progress, runtime=_runtime(cfg))
        scene_map, stats, device = result.scene_map, result.stats, result.device
    finally:
        progress.close()
    save_map(output, scene_map)
    report = {
        'wall_s': time.perf_counter() - start, 'buffer_s': stats.buffer_s,
        'train_s': stats.train_s, 'iterations': stats.iterations,
        'buffer_size': stats.buffer_size, 'buffer_images': stats.buffer_images,
        'frames_used': stats.frames_used, 'frames_without_pose': stats.frames_without_pose,
        'final_loss': stats.final_loss, 'final_median_error_px': stats.final_median_error_px,
        'cloud_points': stats.cloud_points, 'cloud_s': stats.cloud_s,
        'map_bytes': os.path.getsize(output), 'device': device, 'preset': cfg.preset,
        'map': str(output)}
    _logger.info('map written to %s (%.1f MB) in %.0f s: buffer %.0f s, training %.0f s '
                 '(%d iterations)', output, report['map_bytes'] / 1e6, report['wall_s'],
                 stats.buffer_s, stats.train_s, stats.iterations)
    return report


def run_localize(map_path: str, frames: Iterable[Frame], cfg: LocalizationConfig
                 ) -> Iterator[Tuple[Frame, LocalizationResult]]:
    """Localize every frame of `frames`; yields (frame, result).

    The network is warmed up on the first frame first, so that per-frame timings are those
    of a running localizer, not of its one-off compile.
    """
    from ace_ros.core.localizer import Localizer
    from tqdm import tqdm
    localizer = Localizer.from_file(map_path, cfg, _runtime(cfg))
    total = len(frames) if hasattr(frames, '__len__') else None
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        return
    _logger.info('network warm-up for %dx%d images (backend %s, %s head): %.1f s (not in '
                 'the per-frame times)', first.width, first.height, localizer.backend,
                 localizer.head_precision,
                 localizer.warm_up(first))
    for frame in tqdm(itertools.chain([first], frames), desc='localizing', unit='img',
                      total=total, file=sys.stderr, disable=None, mininterval=1.0):
        yield frame, localizer.localize(frame)


def evaluate_frames(map_path: str, frames: Iterable[Frame], cfg: LocalizationConfig
                    ) -> List[FrameEvaluation]:
    """Localize `frames` and score those with a ground-truth pose -> [FrameEvaluation]."""
    from ace_ros.report import evaluate_frame
    records = [evaluate_frame(index, frame, result) for index, (frame, result)
               in enumerate(run_localize(map_path, frames, cfg))
               if frame.world_from_cam is not None]  # others have nothing to score against
    if not records:
        raise ValueError('no query frame has a ground-truth pose to evaluate against')
    return records


def run_evaluate(map_path: str, frames: Iterable[Frame], cfg: LocalizationConfig
                 ) -> Dict[str, float]:
    """Localize `frames` and score them against their ground-truth poses."""
    from ace_ros.report import summarize
    return summarize(evaluate_frames(map_path, frames, cfg))


def cmd_map(args: argparse.Namespace) -> int:
    cfg = config_from_args(MappingConfig, args)
    _check_settings(cfg.device, encoder=cfg.encoder)
    args.outputs.file(args.output, 'map file (-o)', replace=True)
    args.outputs.file(args.report, '--report file', replace=True)
    source = _open_frames(args)
    frames = _load_all(source)
    # A bag says which frame its poses are in; that is the map's frame unless overridden.
    world_frame_id = args.world_frame_id or _pose_frame(source) or 'map'
    report = run_map(frames, cfg, args.output, world_frame_id)
    _write_json(args.report, report)
    return 0


def cmd_localize(args: argparse.Namespace) -> int:
    from ace_ros.report import LocalizedFrame, write_pose_file
    cfg = config_from_args(LocalizationConfig, args)
    _check_settings(cfg.device, encoder=cfg.encoder)
    args.outputs.file(args.output, 'pose file (-o)', replace=True)
    localized = [LocalizedFrame(i, frame.name, frame.stamp, result) for i, (frame, result)
                 in enumerate(run_localize(args.map, _open_frames(args), cfg))]
    _write_atomically(Path(args.output),
                      lambda tmp: write_pose_file(tmp, localized, args.pose_format))
    _logger.info('%d of %d frames localized; poses written to %s (%s format)',
                 sum(f.result.success for f in localized), len(localized), args.output,
                 args.pose_format)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ace_ros import report
    cfg = config_from_args(LocalizationConfig, args)
    _check_settings(cfg.device, encoder=cfg.encoder)
    args.outputs.file(args.json, '--json file', replace=True)
    args.outputs.folder(args.out, '--out folder')
    records = evaluate_frames(args.map, _open_frames(args), cfg)
    summary = report.summarize(records)
    print(metrics.format_table(summary))
    _write_json(args.json, summary)
    if args.out:
        report.write_evaluation(Path(args.out), records, summary)
        _logger.info('per-frame CSV, TUM trajectories and plots written to %s', args.out)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ace_ros.core.config import mapping_config
    from ace_ros.data.sources import open_source
    from ace_ros.data.synthetic import SyntheticSceneConfig, write_synthetic_scene
    _check_settings(args.device)
    args.outputs.file(args.json, '--json file', replace=True)
    args.outputs.folder(args.workdir, '--workdir folder')
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix='ace_ros_demo_'))
    if not args.workdir:
        args.outputs.folder(str(workdir), 'work folder')  # on Ctrl-C: says it was written
    scene_cfg = SyntheticSceneConfig(seed=args.seed, n_train=args.frames,
                                     n_test=args.queries, path_fraction=args.path_fraction)
    _logger.info('rendering a synthetic room (%d mapping + %d query frames) into %s',
                 args.frames, args.queries, workdir)
    scene = write_synthetic_scene(workdir / 'scene', scene_cfg)
    train = _load_all(open_source(str(scene), split='train'))
    map_path = str(workdir / 'room.ace')
    map_cfg = mapping_config(args.preset, device=args.device, time_budget_s=args.time_budget_s)
    report = run_map(train, map_cfg, map_path)
    summary = run_evaluate(map_path, open_source(str(scene), split='test'),
                           LocalizationConfig(device=args.device))
    summary.update({f'mapping_{k}': v for k, v in report.items()
                    if k in ('wall_s', 'buffer_s', 'train_s', 'iterations', 'map_bytes')})
    print(f'\nace_ros demo: mapped {len(train)} frames in {report["wall_s"]:.0f} s '
          f'({report["map_bytes"] / 1e6:.1f} MB map), localized {summary["n_frames"]} '
          'held-out frames:')
    print(metrics.format_table(summary))
    _write_json(args.json, summary)
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from ace_ros.pretrain import PretrainConfig, pretrain
    cfg = config_from_args(PretrainConfig, args)
    _check_settings(cfg.device, init_encoder=cfg.init_encoder)
    args.outputs.folder(args.workdir, '--workdir folder')
    progress = _MappingProgress()

    def report(record: dict, total: int) -> None:
        progress(_Progress('pretrain', int(record['step']), total, loss=record['loss'],
                           valid_fraction=record['accuracy']))

    path = pretrain(cfg, Path(args.workdir), report, stop_at=args.stop_at)
    progress.close()
    _logger.info('encoder written to %s', path)
    return 0


def cmd_export_bag(args: argparse.Namespace) -> int:
    from ace_ros import bag_tools
    options = config_from_args(bag_tools.ExportOptions, args)
    if bag_tools.is_synthetic_spec(args.dataset):
        scene = bag_tools.parse_synthetic_spec(args.dataset)
        frames = bag_tools.synthetic_frames(scene, args.split)
        counts = {'train': scene.n_train, 'test': scene.n_test}
        total = counts.get(args.split, scene.n_train + scene.n_test)
        stamped = False  # the generator's stamps restart per split: use --rate
    else:
        from ace_ros.data.sources import open_source
        frames = open_source(args.dataset, fmt=args.format, split=args.split)
        total, stamped = len(frames), True
    progress = _MappingProgress()
    try:
        report = bag_tools.export_bag(
            frames, args.output, options, stamped,
            lambda done: progress(_Progress('export', done, total)))
    finally:
        progress.close()
    print(f'{report.path}: {report.frames} frames ({report.posed_frames} posed), '
          f'{report.first_stamp:.3f}..{report.last_stamp:.3f} s, {report.bytes / 1e6:.1f} MB')
    return 0


def cmd_play(args: argparse.Namespace) -> int:
    from ace_ros.ros.bag_player import play_bag, require_rclpy
    require_rclpy()
    stats = play_bag(args.bag, rate=args.rate, loop=args.loop, clock_hz=args.clock_hz,
                     topics=args.topics, wait_for_subscribers=args.wait_for,
                     wait_timeout_s=args.wait_timeout)
    counts = ', '.join(f'{t} {n}' for t, n in sorted(stats.messages.items()))
    _logger.info('played %s in %.1f s (%d loops): %s; /clock %d; max lateness %.1f ms',
                 args.bag, stats.wall_s, stats.loops, counts, stats.clock_messages,
                 stats.max_lateness_s * 1e3)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from ace_ros.core.mapfile import load_map, map_info
    args.outputs.file(args.plot, '--plot file')
    print(json.dumps(map_info(args.map), indent=2, sort_keys=True))
    if args.plot:
        from ace_ros.report import plot_map
        scene_map = load_map(args.map)
        plot_map(Path(args.plot), scene_map.scene_mean.numpy(), len(scene_map.frame_names),
                 scene_map.world_frame_id, note=os.path.basename(args.map))
        _logger.info('map plot written to %s', args.plot)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `ace-ros` parser (`ace_ros.cli_args`), each command run by its `cmd_` here."""
    return cli_args.build_parser({
        'map': cmd_map, 'localize': cmd_localize, 'evaluate': cmd_evaluate, 'demo': cmd_demo,
        'pretrain-encoder': cmd_pretrain, 'export-bag': cmd_export_bag, 'play': cmd_play,
        'info': cmd_info})


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format='%(levelname)s %(name)s: %(message)s')
    np.set_printoptions(precision=4, suppress=True)
    args.outputs = _Outputs()
    try:
        return args.func(args)
    except (ValueError, OSError) as error:  # bad input or files: say which, no traceback
        _logger.error('%s', error, exc_info=args.verbose)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback; 130 as a shell reports it
        note = args.outputs.note()
        _logger.error('interrupted (Ctrl-C)%s', f': {note}' if note else '')
        return 130


if __name__ == '__main__':
    sys.exit(main())
