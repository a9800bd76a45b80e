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
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ace_ros import __version__
from ace_ros.cli_args import add_config_flags, config_from_args
from ace_ros.core import metrics
from ace_ros.core.config import LocalizationConfig, MappingConfig
from ace_ros.core.mapper import Progress as _Progress, eta_text
from ace_ros.core.types import Frame

_logger = logging.getLogger('ace_ros')
#: The demo camera covers a quarter of its room loop: one side of the room, as a robot mapping
#: one area would, which the `cpu` preset maps within its budget (benchmarks/RESULTS.md).
DEMO_PATH_FRACTION = 0.25
#: Mapping's share of the demo's 10 minutes: rendering, loading and localizing 60 frames take
#: ~75 s on a 2-core CPU without native bf16 (0.72 s per query). With native bf16 the cpu
#: preset's whole schedule fits in it (406 s).
DEMO_TIME_BUDGET_S = 490.0
DEMO_QUERIES = 60


class _MappingProgress:
    """Core progress callbacks -> a tqdm bar on a terminal, else log lines with ETA."""

    def __init__(self) -> None:
        self._bars: Dict[str, Any] = {}
        self._interactive = sys.stderr.isatty()
        self._started: Dict[str, float] = {}
        self._first_done: Dict[str, int] = {}
        self._next_log: Dict[str, int] = {}

    def __call__(self, p) -> None:
        if p.stage not in self._started:
            self._started[p.stage] = time.perf_counter()
            # A resumed run starts mid-way: its rate counts only the work done here.
            self._first_done[p.stage] = p.done
            self._next_log[p.stage] = 0
        if self._interactive:
            self._update_bar(p)
        elif p.done >= self._next_log[p.stage] or p.done == p.total:
            self._next_log[p.stage] = p.done + max(1, p.total // 10)
            elapsed = time.perf_counter() - self._started[p.stage]
            done_here = p.done - self._first_done[p.stage]
            rate = done_here / elapsed if elapsed > 0 and done_here > 0 else float('nan')
            eta = (p.total - p.done) / rate if rate > 0 else float('nan')
            extra = {'train': f', loss {p.loss:.2f}, median error {p.median_error_px:.1f} px',
                     'pretrain': f', loss {p.loss:.2f}, match {p.valid_fraction:.2f}'
                     }.get(p.stage, '')
            rate_text = f'{rate:.2f}/s' if rate > 0 else 'rate unknown'
            _logger.info('%s %d/%d (%s, %s%s)', _STAGE_NAMES[p.stage], p.done, p.total,
                         rate_text, eta_text(eta), extra)

    def _update_bar(self, p) -> None:
        from tqdm import tqdm
        bar = self._bars.get(p.stage)
        if bar is None:
            bar = self._bars[p.stage] = tqdm(total=p.total, desc=_STAGE_NAMES[p.stage],
                                             unit='it', dynamic_ncols=True, file=sys.stderr)
        bar.update(p.done - bar.n)
        if p.stage == 'train':
            bar.set_postfix(loss=f'{p.loss:.2f}', valid=f'{p.valid_fraction:.2f}',
                            err_px=f'{p.median_error_px:.1f}', refresh=False)
        if p.done >= p.total:
            bar.close()

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()


_STAGE_NAMES = {'buffer': 'buffer (encoding images)', 'train': 'training head',
                'pretrain': 'pretraining encoder', 'export': 'writing bag'}
#: Flags that select what is read from a ROS bag SOURCE -> RosbagSource arguments.
_BAG_FLAGS = {'image_topic': 'image_topic', 'camera_info_topic': 'camera_info_topic',
              'pose_topic': 'pose_topic', 'world_frame': 'world_frame',
              'camera_frame': 'camera_frame', 'max_pose_gap': 'max_pose_gap_s'}


class _Outputs:
    """What a command will write, checked before its work starts, so that a bad path fails
    in a second rather than after the whole mapping run; on Ctrl-C, which of them the run
    had changed (`main` says so)."""

    def __init__(self) -> None:
        self._before: Dict[Path, Any] = {}

    def file(self, path: Optional[str], what: str, replace: bool = False) -> None:
        """`path` (skipped when empty) must be a file this process can write: its folder
        exists and is writable and it is no directory. `replace`: it is written atomically
        (a new file moved over the old one), so an existing read-only file is no obstacle.

        Raises:
            ValueError: naming `what` and `path`.
        """
        if not path:
            return
        file = Path(path)
        folder = file.absolute().parent
        if file.is_dir():
            raise ValueError(f'{what} {path} is a directory; give a file path')
        if not folder.is_dir():
            raise ValueError(f'{what} {path}: folder {folder} does not exist')
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ValueError(f'{what} {path}: folder {folder} is not writable')
        if not replace and file.exists() and not os.access(file, os.W_OK):
            raise ValueError(f'{what} {path} exists and is not writable')
        self._before[file] = _snapshot(file)

    def folder(self, path: Optional[str], what: str) -> None:
        """`path` (skipped when empty) must be a writable folder, or one that can be made:
        no file, and its nearest existing parent a writable folder.

        Raises:
            ValueError: naming `what` and `path`.
        """
        if not path:
            return
        folder = Path(path)
        existing = folder.absolute()
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise ValueError(f'{what} {path}: {existing} is not a folder')
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ValueError(f'{what} {path}: folder {existing} is not writable')
        self._before[folder] = _snapshot(folder)

    def note(self) -> str:
        """After an interruption: what was written, or that nothing was."""
        if not self._before:
            return ''
        changed = [str(p) for p, before in self._before.items() if _snapshot(p) != before]
        if changed:
            return 'written before the interruption: ' + ', '.join(changed)
        return 'nothing was written to ' + ' or '.join(str(p) for p in self._before)


def _snapshot(path: Path) -> Any:
    """What `path` is now (None: nothing), to tell later whether it was written."""
    def identity(st: os.stat_result) -> tuple:
        return st.st_ino, st.st_size, st.st_mtime_ns

    try:
        if path.is_dir():
            with os.scandir(path) as entries:
                return frozenset((e.name, identity(e.stat())) for e in entries)
        return identity(path.stat())
    except OSError:
        return None


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


def _add_source_flags(parser: argparse.ArgumentParser) -> None:
    from ace_ros.data.sources import FORMATS
    parser.add_argument('source', help='dataset folder (ACE layout, 7-Scenes, TUM RGB-D, '
                        'COLMAP) or ROS bag (rosbag2 folder with mcap or sqlite3, ROS 1 .bag)')
    parser.add_argument('--format', default='auto', choices=['auto', *FORMATS],
                        help='source format (default: detected)')
    parser.add_argument('--split', default=None,
                        help="'train' or 'test' (default: all): ACE layout / 7-Scenes split "
                             'folders; TUM, COLMAP and bags: alternate blocks of 25 frames')
    parser.add_argument('--block-split', default=None, metavar='N:PARITY',
                        help='keep frame i when (i // N) %% 2 == PARITY, e.g. 25:0 (mapping) '
                             'and 25:1 (queries) for the TUM benchmark split')
    bag = parser.add_argument_group('ROS bag sources (topics are detected when unique)')
    bag.add_argument('--image-topic', help='sensor_msgs/Image or CompressedImage topic')
    bag.add_argument('--camera-info-topic', help='sensor_msgs/CameraInfo topic')
    bag.add_argument('--pose-topic', help='poses from a PoseStamped, PoseWithCovarianceStamped '
                     'or Odometry topic (default: the only one in the bag)')
    bag.add_argument('--world-frame', help='poses from TF instead: this fixed frame -> the '
                     'camera frame, through /tf and /tf_static')
    bag.add_argument('--camera-frame', help="the camera's optical frame in TF (default: the "
                     "images' frame_id)")
    bag.add_argument('--max-pose-gap', type=float, metavar='S',
                     help='largest spacing of the pose / TF samples around an image stamp '
                          '(default: 0.05 s); frames farther from poses get none')


def _open_frames(args: argparse.Namespace):
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


def _pose_frame(source) -> Optional[str]:
    """The frame a bag's poses are given in (None for dataset folders)."""
    while hasattr(source, 'source'):  # unwrap Subsets
        source = source.source
    return getattr(source, 'pose_frame', None) or None


def _load_all(source) -> List[Frame]:
    from tqdm import tqdm
    return [f for f in tqdm(source, desc='reading frames', unit='img', file=sys.stderr,
                            disable=None, mininterval=1.0)]


def run_map(frames: Sequence[Frame], cfg: MappingConfig, output: str,
            world_frame_id: str = 'map') -> Dict[str, Any]:
    """Map `frames`, save atomically to `output`; returns the report dict."""
    from ace_ros.core.mapfile import save_map
    from ace_ros.core.mapper import map_frames
    start = time.perf_counter()
    progress = _MappingProgress()
    try:
        result = map_frames(frames, cfg, world_frame_id, progress)
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


def run_localize(map_path: str, frames, cfg: LocalizationConfig):
    """Localize every frame of `frames`; yields (frame, result).

    The network is warmed up on the first frame first, so that per-frame timings are those
    of a running localizer, not of its one-off compile.
    """
    from ace_ros.core.localizer import Localizer
    from tqdm import tqdm
    localizer = Localizer.from_file(map_path, cfg)
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


def evaluate_frames(map_path: str, frames, cfg: LocalizationConfig) -> list:
    """Localize `frames` and score those with a ground-truth pose -> [FrameEvaluation]."""
    from ace_ros.report import evaluate_frame
    records = [evaluate_frame(index, frame, result) for index, (frame, result)
               in enumerate(run_localize(map_path, frames, cfg))
               if frame.world_from_cam is not None]  # others have nothing to score against
    if not records:
        raise ValueError('no query frame has a ground-truth pose to evaluate against')
    return records


def run_evaluate(map_path: str, frames, cfg: LocalizationConfig) -> Dict[str, float]:
    """Localize `frames` and score them against their ground-truth poses."""
    from ace_ros.report import summarize
    return summarize(evaluate_frames(map_path, frames, cfg))


def _write_json(path: Optional[str], data: Dict[str, Any]) -> None:
    if path:
        _write_atomically(Path(path), lambda tmp: tmp.write_text(
            json.dumps(data, indent=2, sort_keys=True) + '\n'))


def _write_atomically(path: Path, write) -> None:
    """`write(tmp)` a temporary file beside `path`, then move it there: an interruption
    leaves the old file (or none), never half of one, and no temporary file. A new file
    gets mode 0644, an existing one keeps its mode (as map files)."""
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    fd, name = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp',
                                dir=path.absolute().parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
    from ace_ros.bag_player import play_bag
    try:
        import rclpy  # noqa: F401  (only to give a clear message when ROS is missing)
    except ImportError as error:
        raise ValueError(f'ace-ros play needs rclpy (ROS 2 Python): source a ROS 2 '
                         f'installation or run scripts/setup.sh ({error})') from None
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
    parser = argparse.ArgumentParser(
        prog='ace-ros', description='ACE relocalization offline: map a scene from posed '
        'images, localize images in it, evaluate against ground truth.')
    parser.add_argument('--version', action='version', version=f'ace_ros {__version__}')
    parser.add_argument('-v', '--verbose', action='store_true', help='debug logging')
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    p = sub.add_parser('map', help='train a scene map from posed images')
    _add_source_flags(p)
    p.add_argument('-o', '--output', required=True, metavar='MAP', help='map file to write')
    p.add_argument('--report', metavar='REPORT.json', help='write timings and sizes here')
    p.add_argument('--world-frame-id', default=None,
                   help="frame id of the map (default: a bag's pose frame, else 'map')")
    add_config_flags(p, MappingConfig)
    p.set_defaults(func=cmd_map)

    p = sub.add_parser('localize', help='localize images in a map; writes one pose per line')
    p.add_argument('map', help='map file (.ace)')
    _add_source_flags(p)
    p.add_argument('-o', '--output', required=True, metavar='POSES.txt')
    p.add_argument('--pose-format', default='ace', choices=['ace', 'tum'],
                   help="'ace': every frame, 'name qw qx qy qz tx ty tz inliers confidence'; "
                   "'tum': localized frames, 'timestamp tx ty tz qx qy qz qw' (evo reads it); "
                   'camera-to-world (default: ace)')
    add_config_flags(p, LocalizationConfig)
    p.set_defaults(func=cmd_localize)

    p = sub.add_parser('evaluate', help='localize images and score them against ground truth')
    p.add_argument('map', help='map file (.ace)')
    _add_source_flags(p)
    p.add_argument('--json', metavar='OUT.json', help='write the summary here')
    p.add_argument('--out', metavar='DIR', help='write frames.csv (per-frame errors), est.txt '
                   'and gt.txt (TUM trajectories) and PNG plots into DIR')
    add_config_flags(p, LocalizationConfig)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser('demo', help='render a synthetic room, map it, localize in it')
    p.add_argument('--json', metavar='OUT.json', help='write the summary here')
    p.add_argument('--workdir', help='where to write the scene and map (default: a temp dir)')
    p.add_argument('--frames', type=int, default=300, help='mapping frames (default: 300)')
    p.add_argument('--queries', type=int, default=DEMO_QUERIES,
                   help='query frames (default: %(default)s)')
    p.add_argument('--path-fraction', type=float, default=DEMO_PATH_FRACTION,
                   help='part of the room loop the camera covers (default: '
                   f'{DEMO_PATH_FRACTION}; 1 = a full 360-degree lap, which the cpu preset\'s '
                   'budget does not map well: benchmarks/RESULTS.md)')
    p.add_argument('--preset', default='cpu', help='mapping preset (default: cpu)')
    p.add_argument('--time-budget-s', type=float, default=DEMO_TIME_BUDGET_S,
                   help='mapping time budget (default: %(default)s s, so that the whole demo '
                   'takes under 10 minutes on 2 CPU cores; 0: none)')
    p.add_argument('--device', default='auto', help="'auto', 'cpu' or 'cuda'")
    p.add_argument('--seed', type=int, default=0, help='scene seed')
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser('pretrain-encoder', help='train the scene-agnostic encoder on many '
                       'synthetic rooms (resumable)')
    p.add_argument('--workdir', required=True,
                   help='checkpoint and output folder; an existing checkpoint is resumed')
    p.add_argument('--stop-at', type=int, metavar='STEP',
                   help='stop (checkpointed, encoder exported) at this step without changing '
                        'the schedule that --steps defines; run again to resume')
    from ace_ros.pretrain import PretrainConfig
    add_config_flags(p, PretrainConfig)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser('export-bag', help='write a dataset or a synthetic room as a ROS bag '
                       '(Image, CameraInfo, PoseStamped, TF)')
    p.add_argument('dataset', help='dataset folder, ROS bag, or a generated room: synthetic, '
                   'synthetic:SEED or synthetic:KEY=VALUE,... (SyntheticSceneConfig fields, '
                   'e.g. synthetic:seed=2,n_train=100,n_test=0)')
    p.add_argument('-o', '--output', required=True, metavar='BAG',
                   help='rosbag2 folder to create (a .bag file with --storage ros1)')
    from ace_ros.data.sources import FORMATS
    p.add_argument('--format', default='auto', choices=['auto', *FORMATS],
                   help='dataset format (default: detected)')
    p.add_argument('--split', default=None, help="'train' or 'test' (default: all frames)")
    from ace_ros.bag_tools import ExportOptions
    add_config_flags(p, ExportOptions)
    p.set_defaults(func=cmd_export_bag)

    p = sub.add_parser('play', help='publish a bag over ROS 2 with its timing and /clock '
                       '(for machines without ros2 bag; needs rclpy)')
    p.add_argument('bag', help='rosbag2 folder or ROS 1 .bag')
    p.add_argument('--rate', type=float, default=1.0, help='speed factor (default: 1.0)')
    p.add_argument('--loop', action='store_true', help='start over at the end')
    p.add_argument('--clock-hz', type=float, default=100.0,
                   help='publish /clock at this rate, 0 for none (default: 100)')
    p.add_argument('--topics', nargs='+', metavar='TOPIC', help='only these topics')
    p.add_argument('--wait-for', nargs='+', default=[], metavar='TOPIC',
                   help='wait until each TOPIC has a subscriber before playing')
    p.add_argument('--wait-timeout', type=float, default=10.0, metavar='S',
                   help='how long --wait-for waits (default: 10 s)')
    p.set_defaults(func=cmd_play)

    p = sub.add_parser('info', help="print a map file's metadata")
    p.add_argument('map', help='map file (.ace)')
    p.add_argument('--plot', metavar='OUT.png', help='draw what the map records of the scene '
                   '(its scene mean: map files hold no camera poses)')
    p.set_defaults(func=cmd_info)
    return parser


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
