"""The `ace-ros` command line: its parser, and flags generated from the settings
dataclasses, so names exist once.

Every field of MappingConfig / LocalizationConfig becomes `--field-name`; precedence is
defaults < preset < --config YAML < flags. The commands themselves are `ace_ros.cli`.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Type, TypeVar

import yaml

from ace_ros import __version__
from ace_ros.core.config import config_from_dict, LocalizationConfig, MappingConfig

T = TypeVar('T')
#: What runs a command: the parsed arguments -> the exit status.
Command = Callable[[argparse.Namespace], int]


def add_config_flags(parser: argparse.ArgumentParser, cls: Type[Any]) -> None:
    """Add `--config` and one flag per dataclass field (default None = not given)."""
    parser.add_argument('--config', metavar='YAML',
                        help='settings file: a flat mapping of the flags below, or the ROS '
                             'layout <node>: {ros__parameters: {...}}')
    group = parser.add_argument_group(f'{cls.__name__} settings')
    for f in dataclasses.fields(cls):
        flag = '--' + f.name.replace('_', '-')
        help_text = f"{f.metadata.get('help', '')} (default: {f.default!r})".replace('%', '%%')
        if isinstance(f.default, bool):
            group.add_argument(flag, dest=f.name, default=None,
                               action=argparse.BooleanOptionalAction, help=help_text)
        else:
            group.add_argument(flag, dest=f.name, default=None, type=type(f.default),
                               metavar=type(f.default).__name__.upper(), help=help_text)


def read_yaml_settings(path: str) -> Dict[str, Any]:
    """A flat settings mapping from YAML; the ROS layout's ros__parameters are unwrapped."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f'settings file {path} does not exist')
    data = yaml.safe_load(file.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f'settings file {path}: expected a mapping, got {type(data).__name__}')
    nested = [v['ros__parameters'] for v in data.values()
              if isinstance(v, dict) and 'ros__parameters' in v]
    if nested:
        if len(nested) > 1:
            raise ValueError(f'settings file {path} holds {len(nested)} nodes; expected one')
        data = nested[0]
    return data


def config_from_args(cls: Type[T], args: argparse.Namespace) -> T:
    """Defaults < preset < YAML < flags -> a validated `cls` instance."""
    values: Dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    if getattr(args, 'config', None):
        settings = read_yaml_settings(args.config)
        # The ROS layout may carry node-only parameters (topics, frames): keep ours.
        values.update({k: v for k, v in settings.items() if k in names})
    values.update({name: getattr(args, name) for name in names
                   if getattr(args, name, None) is not None})
    return config_from_dict(cls, values, args.config or 'command line')


#: The demo camera covers a quarter of its room loop: one side of the room, as a robot mapping
#: one area would, which the `cpu` preset maps within its budget (benchmarks/RESULTS.md).
DEMO_PATH_FRACTION = 0.25
#: Mapping's share of the demo's 10 minutes: rendering, loading and localizing 60 frames take
#: ~75 s on a 2-core CPU without native bf16 (0.72 s per query). With native bf16 the cpu
#: preset's whole schedule fits in it (406 s).
DEMO_TIME_BUDGET_S = 490.0
DEMO_QUERIES = 60


def add_source_flags(parser: argparse.ArgumentParser) -> None:
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


def build_parser(commands: Mapping[str, Command]) -> argparse.ArgumentParser:
    """The `ace-ros` parser; `commands` maps each command's name to what runs it (the
    parsed arguments' `func`)."""
    parser = argparse.ArgumentParser(
        prog='ace-ros', description='ACE relocalization offline: map a scene from posed '
        'images, localize images in it, evaluate against ground truth.')
    parser.add_argument('--version', action='version', version=f'ace_ros {__version__}')
    parser.add_argument('-v', '--verbose', action='store_true', help='debug logging')
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    p = sub.add_parser('map', help='train a scene map from posed images')
    add_source_flags(p)
    p.add_argument('-o', '--output', required=True, metavar='MAP', help='map file to write')
    p.add_argument('--report', metavar='REPORT.json', help='write timings and sizes here')
    p.add_argument('--world-frame-id', default=None,
                   help="frame id of the map (default: a bag's pose frame, else 'map')")
    add_config_flags(p, MappingConfig)
    p.set_defaults(func=commands['map'])

    p = sub.add_parser('localize', help='localize images in a map; writes one pose per line')
    p.add_argument('map', help='map file (.ace)')
    add_source_flags(p)
    p.add_argument('-o', '--output', required=True, metavar='POSES.txt')
    p.add_argument('--pose-format', default='ace', choices=['ace', 'tum'],
                   help="'ace': every frame, 'name qw qx qy qz tx ty tz inliers confidence'; "
                   "'tum': localized frames, 'timestamp tx ty tz qx qy qz qw' (evo reads it); "
                   'camera-to-world (default: ace)')
    add_config_flags(p, LocalizationConfig)
    p.set_defaults(func=commands['localize'])

    p = sub.add_parser('evaluate', help='localize images and score them against ground truth')
    p.add_argument('map', help='map file (.ace)')
    add_source_flags(p)
    p.add_argument('--json', metavar='OUT.json', help='write the summary here')
    p.add_argument('--out', metavar='DIR', help='write frames.csv (per-frame errors), est.txt '
                   'and gt.txt (TUM trajectories) and PNG plots into DIR')
    add_config_flags(p, LocalizationConfig)
    p.set_defaults(func=commands['evaluate'])

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
    p.set_defaults(func=commands['demo'])

    p = sub.add_parser('pretrain-encoder', help='train the scene-agnostic encoder on many '
                       'synthetic rooms (resumable)')
    p.add_argument('--workdir', required=True,
                   help='checkpoint and output folder; an existing checkpoint is resumed')
    p.add_argument('--stop-at', type=int, metavar='STEP',
                   help='stop (checkpointed, encoder exported) at this step without changing '
                        'the schedule that --steps defines; run again to resume')
    from ace_ros.pretrain import PretrainConfig
    add_config_flags(p, PretrainConfig)
    p.set_defaults(func=commands['pretrain-encoder'])

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
    p.set_defaults(func=commands['export-bag'])

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
    p.set_defaults(func=commands['play'])

    p = sub.add_parser('info', help="print a map file's metadata")
    p.add_argument('map', help='map file (.ace)')
    p.add_argument('--plot', metavar='OUT.png', help='draw what the map records of the scene '
                   '(its scene mean: map files hold no camera poses)')
    p.set_defaults(func=commands['info'])
    return parser
