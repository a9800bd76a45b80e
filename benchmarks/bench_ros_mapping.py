"""mapping_node benchmark: a bag replayed at real time vs the CLI mapping the same bag offline.

Usage: .venv/bin/python benchmarks/bench_ros_mapping.py [--train 120] [--test 40]
       [--preset cpu|tiny] [--bag-rate 30] [--pose-source pose|tf] [--json out.json]

1. A synthetic room (`--train` + `--test` frames, 640x480) is rendered; the train frames are
   exported with `export_bag` to a rosbag2 (mcap: Image rgb8, CameraInfo, PoseStamped, /tf
   with a base_link -> optical mount), stamped at `--bag-rate` Hz from 100 s.
2. Offline: what `ace-ros map BAG -o MAP --preset P` does (`run_map` on the bag source).
3. Online: `mapping_node` in a subprocess (same preset, device and encoder; every frame a
   keyframe: min_translation_m = min_rotation_deg = 0, max_keyframes > frames; poses from the
   bag's PoseStamped or TF; use_sim_time with /clock); the bag is replayed at rate 1.0 with
   `BagPlayer` (reliable publishers, as `ros2 bag play`); `idle_timeout_s` after the last
   image ends collection, the node trains, writes the map and exits.
4. Both maps are evaluated on the same test frames with the same LocalizationConfig.

Issue target: mapping from a bag replayed at real time ends with the same accuracy as the
CLI mapping the same frames offline. Reported per path: % within 10cm/5deg and 5cm/5deg,
median cm / deg, frames used, frames without pose, mapping wall time; and whether the two
maps were trained on the same frames.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
import re
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict

REPO = Path(__file__).resolve().parents[1]
IMAGE, INFO, POSE = '/camera/image_raw', '/camera/camera_info', '/camera/pose'
ROWS = (('pct_10cm_5deg', '% within 10 cm / 5 deg', '{:.1f}'),
        ('pct_5cm_5deg', '% within 5 cm / 5 deg', '{:.1f}'),
        ('median_t_cm', 'median error (cm)', '{:.1f}'),
        ('median_r_deg', 'median error (deg)', '{:.2f}'),
        ('n_failed', 'queries failed (of n)', '{:.0f}'),
        ('frames_used', 'frames used for mapping', '{:.0f}'),
        ('frames_without_pose', 'frames without pose', '{:.0f}'),
        ('frames_not_received', 'bag images not received', '{:.0f}'),
        ('iterations', 'training iterations', '{:.0f}'),
        ('final_loss', 'final training loss', '{:.3f}'),
        ('mapping_wall_s', 'mapping wall time (s)', '{:.0f}'),
        ('train_s', '  of which training (s)', '{:.0f}'))


def ros_environment(domain: int, log_dir: str) -> Dict[str, str]:
    """The environment of this process and the node: one domain, localhost, SHM profile."""
    os.environ.update({
        'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST', 'ROS_DOMAIN_ID': str(domain),
        'FASTDDS_DEFAULT_PROFILES_FILE': str(REPO / 'config' / 'fastdds_shm.xml'),
        'RMW_IMPLEMENTATION': 'rmw_fastrtps_cpp', 'ROS_LOG_DIR': log_dir,
        'RCUTILS_COLORIZED_OUTPUT': '0', 'PYTHONUNBUFFERED': '1'})
    os.environ.pop('ROS_LOCALHOST_ONLY', None)
    return dict(os.environ)


def mapping_cfg(args: argparse.Namespace):
    from ace_ros.core.config import mapping_config
    overrides: Dict[str, Any] = {'device': args.device, 'encoder': args.encoder}
    if args.max_iterations is not None:
        overrides['max_iterations'] = args.max_iterations
    return mapping_config(args.preset, **overrides)


def export(args: argparse.Namespace, work: Path):
    from ace_ros.bag_tools import export_bag, ExportOptions
    from ace_ros.data.synthetic import generate_frames, SyntheticSceneConfig
    scene = SyntheticSceneConfig(seed=args.seed, width=args.width, height=args.height,
                                 focal=525.0 * args.height / 480, n_train=args.train,
                                 n_test=args.test)
    if args.dataset:
        # A real sequence: its mapping split becomes the bag (own stamps), the rest are queries.
        from ace_ros.data.sources import open_source
        bag = work / 'dataset_bag'
        if not bag.exists():
            export_bag(iter(open_source(args.dataset, split='train')), bag,
                       ExportOptions(base_frame='base_link'), stamped=True)
        args.bag_frames = len(open_source(args.dataset, split='train'))
        return bag, list(open_source(args.dataset, split='test'))
    args.bag_frames = args.train
    bag = work / 'room_bag'
    if not bag.exists():
        export_bag(generate_frames(scene, 'train'), bag,
                   ExportOptions(rate=args.bag_rate, start_time=100.0, base_frame='base_link'),
                   stamped=False)
    return bag, list(generate_frames(scene, 'test'))


def bag_source(args: argparse.Namespace, bag: Path):
    from ace_ros.data.sources import open_source
    if args.pose_source == 'tf':
        return open_source(bag, fmt='rosbag', image_topic=IMAGE, world_frame='map')
    return open_source(bag, fmt='rosbag', image_topic=IMAGE, pose_topic=POSE)


def offline(args: argparse.Namespace, bag: Path, work: Path) -> Dict[str, Any]:
    from ace_ros.cli import run_map
    from ace_ros.core.mapfile import load_map
    source = bag_source(args, bag)
    start = time.perf_counter()
    frames = list(source)
    read_s = time.perf_counter() - start
    out = work / 'offline.ace'
    report = run_map(frames, mapping_cfg(args), str(out), getattr(source, 'pose_frame', '')
                     or 'map')
    return {'map': str(out), 'mapping_wall_s': report['wall_s'] + read_s,
            'train_s': report['train_s'], 'buffer_s': report['buffer_s'],
            'iterations': report['iterations'], 'final_loss': report['final_loss'],
            'frames_used': report['frames_used'],
            'frames_without_pose': report['frames_without_pose'], 'frames_not_received': 0,
            'frame_names': load_map(str(out)).frame_names}


def online(args: argparse.Namespace, bag: Path, work: Path, env: Dict[str, str]
           ) -> Dict[str, Any]:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    import yaml
    from ace_ros.ros.bag_player import BagPlayer
    from ace_ros.core.mapfile import load_map

    map_path = work / 'online.ace'
    cfg = mapping_cfg(args)
    parameters = {
        'preset': args.preset, 'device': args.device, 'encoder': args.encoder,
        'map_path': str(map_path), 'keyframes_dir': str(work / 'online_keyframes'),
        'max_keyframes': args.bag_frames + 1, 'min_translation_m': 0.0,
        'min_rotation_deg': 0.0,
        'pose_source': args.pose_source, 'fixed_frame': 'map', 'use_sim_time': True,
        'idle_timeout_s': args.idle_timeout, 'image_qos': args.image_qos}
    if args.max_iterations is not None:
        parameters['max_iterations'] = cfg.max_iterations
    params_file = work / 'mapping_params.yaml'
    params_file.write_text(yaml.safe_dump({'mapping_node': {'ros__parameters': parameters}}))
    command = [sys.executable, '-m', 'ace_ros.ros.mapping_node', '--ros-args',
               '--params-file', str(params_file), '-r', f'image:={IMAGE}',
               '-r', f'camera_info:={INFO}', '-r', f'pose:={POSE}']
    log_path = work / 'mapping_node.log'
    topics = [IMAGE, INFO] + ([POSE] if args.pose_source == 'pose' else ['/tf', '/tf_static'])
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(command, env=env, cwd=work, stdout=log,
                                stderr=subprocess.STDOUT)
        rclpy.init()
        node = rclpy.create_node('bench_bag_player')
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        player = BagPlayer(bag, rate=1.0, clock_hz=100.0, topics=topics)
        played: Dict[str, Any] = {}

        def play() -> None:
            try:
                played['stats'] = player.run(node, [IMAGE, '/clock'], wait_timeout_s=120.0)
            except Exception as error:  # noqa: BLE001 - reported below
                played['error'] = error
            played['end'] = time.monotonic()

        start = time.monotonic()
        thread = threading.Thread(target=play, daemon=True)
        thread.start()
        try:
            while (proc.poll() is None and 'error' not in played
                   and time.monotonic() - start < args.timeout):
                executor.spin_once(timeout_sec=0.1)
        finally:
            player.stop()
            thread.join()
            executor.shutdown()
            node.destroy_node()
            rclpy.try_shutdown()
            if proc.poll() is None:
                proc.send_signal(2)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    end = time.monotonic()
    text = log_path.read_text()
    if 'error' in played or proc.returncode != 0 or not map_path.is_file():
        raise RuntimeError(f"mapping_node failed (exit {proc.returncode}, player "
                           f"{played.get('error')}); log {log_path}:\n{text[-3000:]}")
    stats = played['stats']
    inputs = re.search(r'training the map; inputs: (.*)', text)
    counts = {k: int(v) for k, v in re.findall(r'(\w+) (\d+)', inputs.group(1))} \
        if inputs else {}
    trained = re.search(r'(\d+) iterations in (\d+) s, final loss ([\d.]+)', text)
    scene_map = load_map(str(map_path))
    sent = stats.messages.get(IMAGE, 0)
    play_s = played['end'] - start
    return {'map': str(map_path), 'mapping_wall_s': end - start,
            'mapping_after_bag_end_s': end - played['end'], 'play_s': play_s,
            'bag_images_published': sent, 'player_max_lateness_s': stats.max_lateness_s,
            'idle_timeout_s': args.idle_timeout,
            'train_s': float(trained.group(2)) if trained else math.nan,
            'iterations': int(trained.group(1)) if trained else math.nan,
            'final_loss': float(trained.group(3)) if trained else math.nan,
            'frames_used': len(scene_map.frame_names),
            'frames_without_pose': counts.get('no_pose', 0),
            'frames_not_received': sent - counts.get('images', 0),
            'node_counts': counts, 'frame_names': scene_map.frame_names, 'log': str(log_path)}


def evaluate(map_path: str, queries, args: argparse.Namespace) -> Dict[str, float]:
    from ace_ros.cli import run_evaluate
    from ace_ros.core.config import LocalizationConfig
    cfg = LocalizationConfig(device=args.device, encoder=args.encoder,
                             image_height=mapping_cfg(args).image_height)
    return run_evaluate(map_path, queries, cfg)


def print_report(result: Dict[str, Any]) -> None:
    paths = [p for p in ('offline', 'online') if p in result]
    print()
    print(f"== mapping: CLI offline vs mapping_node on a real-time bag replay "
          f"(preset {result['preset']}, {result['train']} train / {result['test']} test "
          f"frames, {result['width']}x{result['height']}, bag {result['bag_rate']} Hz, "
          f"poses from {result['pose_source']}) ==")
    print(f"{'':28s}" + ''.join(f'{p:>12s}' for p in paths))
    for key, label, fmt in ROWS:
        cells = []
        for p in paths:
            value = result[p].get(key, math.nan)
            cells.append(fmt.format(value) if isinstance(value, (int, float)) else str(value))
        print(f'{label:28s}' + ''.join(f'{c:>12s}' for c in cells))
    if 'online' in result:
        o = result['online']
        print(f"online: bag played in {o['play_s']:.1f} s ({o['bag_images_published']} images,"
              f" player at most {1000 * o['player_max_lateness_s']:.0f} ms late); map written "
              f"{o['mapping_after_bag_end_s']:.0f} s after the bag ended (idle_timeout_s "
              f"{o['idle_timeout_s']:g}); node counts: {o['node_counts']}")
    if 'same_frames' in result:
        print(f"same frames in both maps: {result['same_frames']} (offline only "
              f"{result['only_offline']}, online only {result['only_online']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dataset', help='a real sequence instead of a synthetic room (e.g. '
                        '../shared/data/tum_fr1_rpy: its train split is bagged at its own '
                        'stamps, its test split are the queries)')
    parser.add_argument('--seed', type=int, default=3, help='synthetic room seed')
    parser.add_argument('--train', type=int, default=120, help='frames in the bag')
    parser.add_argument('--test', type=int, default=40, help='query frames')
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--height', type=int, default=480)
    parser.add_argument('--bag-rate', type=float, default=30.0, help='frame rate of the bag')
    parser.add_argument('--preset', default='cpu', choices=['default', 'cpu', 'tiny'])
    parser.add_argument('--max-iterations', type=int, help='override the preset cap')
    parser.add_argument('--pose-source', default='pose', choices=['pose', 'tf'])
    parser.add_argument('--image-qos', default='sensor_data',
                        choices=['sensor_data', 'reliable'], help="mapping_node's image QoS")
    parser.add_argument('--idle-timeout', type=float, default=5.0, help='idle_timeout_s')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--encoder', default='random:0')
    parser.add_argument('--domain', type=int, default=78, help='ROS_DOMAIN_ID')
    parser.add_argument('--timeout', type=float, default=3600.0, help='online run limit (s)')
    parser.add_argument('--skip-offline', action='store_true')
    parser.add_argument('--skip-online', action='store_true')
    parser.add_argument('--workdir', help='bag, maps and logs (default: temp; a bag already '
                        'there is reused)')
    parser.add_argument('--json', help='also write the results here')
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix='bench_ros_map_'))
    work.mkdir(parents=True, exist_ok=True)
    env = ros_environment(args.domain, str(work / 'ros_log'))
    bag, queries = export(args, work)
    result: Dict[str, Any] = {k: getattr(args, k) for k in (
        'preset', 'train', 'test', 'width', 'height', 'bag_rate', 'pose_source', 'image_qos',
        'device', 'encoder', 'seed', 'max_iterations')}
    result['bag'] = str(bag)
    # What the bag and the query set really hold (a --dataset sets its own sizes and rate).
    result.update(train=args.bag_frames, test=len(queries))
    if args.dataset:
        result.update(bag_rate='own stamps', width='source', height='source')
    if not args.skip_offline:
        print('offline mapping (ace-ros map BAG) ...', flush=True)
        result['offline'] = offline(args, bag, work)
        result['offline'].update(evaluate(result['offline']['map'], queries, args))
    if not args.skip_online:
        print('online mapping (mapping_node, bag at rate 1.0) ...', flush=True)
        result['online'] = online(args, bag, work, env)
        result['online'].update(evaluate(result['online']['map'], queries, args))
    if 'offline' in result and 'online' in result:
        a = set(result['offline']['frame_names'])
        b = set(result['online']['frame_names'])
        result.update(same_frames=a == b, only_offline=len(a - b), only_online=len(b - a))
    print_report(result)
    if args.json:
        data: Dict[str, Any] = json.loads(json.dumps(result, default=str))
        for p in ('offline', 'online'):
            if p in data:
                data[p].pop('frame_names', None)
        Path(args.json).write_text(json.dumps(data, indent=2, sort_keys=True) + '\n')


if __name__ == '__main__':
    main()
