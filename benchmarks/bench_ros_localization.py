"""localization_node benchmark: a 640x480 camera stream through ROS 2 vs the engine.

Usage: .venv/bin/python benchmarks/bench_ros_localization.py [--map MAP] [--duration 20]
       [--rate engine|HZ] [--json out.json]

1. Map: `--map MAP`, or a small map of a synthetic room made here (`cpu` preset at 480 px
   height, `--map-frames` frames, `--map-iterations` iterations: the map only has to exist;
   accuracy is not what this measures).
2. Engine: `Localizer.localize` in this process on the room's 640x480 query frames
   (per-stage ms after `Localizer.warm_up`, which compiles every region's head, and 3
   frames), as benchmarks/bench_localization.py.
3. Node: `localization_node` in a subprocess (Fast DDS, SHM profile, ROS_DOMAIN_ID
   `--domain`, localhost discovery); this process publishes the same query frames (rgb8,
   with a CameraInfo each) with sensor-data QoS, as a camera driver would, and subscribes
   to `~/pose` and /diagnostics: first an unmeasured stream until the first pose comes
   back plus `--warmup` s (the time from the first image to the first pose is reported:
   it holds the node's warm-up), then `--duration` s measured, at `--rate` Hz ('engine',
   the default: the engine's own rate, 1000 / its mean ms per frame).

Reported: input rate, processed rate, frames lost in transport and dropped as stale (the
node localizes only the newest image), latency image stamp -> pose received
(mean and percentiles), the node's per-stage ms from /diagnostics, node latency / engine ms
(issue 3's target: within 20 %) and the **throughput ratio**: the node's processed rate /
the rate it could reach (the input rate, or the engine's own rate when that is lower;
issue 17's target: >= 0.9 at the engine's own rate). `min_inliers` defaults to 4 so that
every processed frame publishes a pose (a map from the random encoder rarely reaches 50
inliers); both the engine and the node use the same LocalizationConfig.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
STAGES = ('prepare', 'encoder', 'head', 'ransac', 'total')
NODE_STATUS = 'localization_node: localization'
WINDOW = 50  # frames in the node's latency window (diagnostics.WindowStats)
CAMERA_FRAME = 'camera_optical_frame'


def ros_environment(domain: int, log_dir: str) -> Dict[str, str]:
    """The environment of this process and the node: one domain, localhost, SHM profile."""
    env = {
        'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST', 'ROS_DOMAIN_ID': str(domain),
        'FASTDDS_DEFAULT_PROFILES_FILE': str(REPO / 'config' / 'fastdds_shm.xml'),
        'RMW_IMPLEMENTATION': 'rmw_fastrtps_cpp', 'ROS_LOG_DIR': log_dir,
        'RCUTILS_COLORIZED_OUTPUT': '0', 'PYTHONUNBUFFERED': '1'}
    os.environ.update(env)
    os.environ.pop('ROS_LOCALHOST_ONLY', None)
    return dict(os.environ)


def percentile(values: List[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float('nan')


def build_map(args: argparse.Namespace, work: Path, frames_train) -> str:
    from ace_ros.cli import run_map
    from ace_ros.core.config import mapping_config
    cfg = mapping_config('cpu', image_height=480, max_iterations=args.map_iterations,
                         device=args.device, encoder=args.encoder)
    path = work / 'room.ace'
    report = run_map(frames_train, cfg, str(path))
    print(f"map: {len(frames_train)} frames, {report['iterations']} iterations, "
          f"{report['wall_s']:.0f} s -> {path}")
    return str(path)


def measure_engine(map_path: str, loc_cfg, frames, repeats: int) -> Dict[str, Dict[str, float]]:
    from ace_ros.core.localizer import Localizer
    from ace_ros.core.runtime import make_runtime
    from ace_ros.data.calibration import calibration_inputs
    localizer = Localizer.from_file(
        map_path, loc_cfg, make_runtime(loc_cfg.device, loc_cfg.encoder, calibration_inputs))
    localizer.warm_up(frames[0])  # OpenVINO compiles: the encoder, then each region's head
    for frame in frames[:3]:  # warm-up: allocator, oneDNN kernel selection
        localizer.localize(frame)
    results = [localizer.localize(frames[i % len(frames)])
               for i in range(max(repeats, 1))]
    out = {}
    for stage in STAGES:
        values = [r.timings_ms[stage] for r in results]
        out[stage] = {'mean': statistics.mean(values), 'median': statistics.median(values),
                      'p95': percentile(values, 95)}
    out['success_rate'] = {'mean': float(np.mean([r.success for r in results]))}
    out['backend'] = getattr(localizer, 'backend', 'torch')
    return out


def _diag_values(array) -> Optional[Dict[str, str]]:
    for status in array.status:
        if status.name == NODE_STATUS:
            return {kv.key: kv.value for kv in status.values}
    return None


def _num(values: Optional[Dict[str, str]], key: str) -> float:
    try:
        return float(values[key]) if values else float('nan')
    except (KeyError, ValueError):
        return float('nan')


class Camera:
    """Publishes prebuilt image + camera_info messages at a fixed rate from a thread."""

    def __init__(self, node, frames, rate_hz: float) -> None:
        from ace_ros.ros import conversions
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import CameraInfo, Image
        self._conversions = conversions
        self.image_pub = node.create_publisher(Image, '/camera/image_raw',
                                               qos_profile_sensor_data)
        self.info_pub = node.create_publisher(CameraInfo, '/camera/camera_info',
                                              qos_profile_sensor_data)
        stamp0 = conversions.ns_to_stamp(0)
        self._images = [conversions.rgb_to_image(f.image, stamp0, CAMERA_FRAME, 'rgb8')
                        for f in frames]
        K = frames[0].K
        info = CameraInfo()
        info.header.frame_id = CAMERA_FRAME
        info.height, info.width = frames[0].image.shape[:2]
        info.distortion_model = 'plumb_bob'
        info.d = [0.0] * 5
        info.k = [float(v) for v in K.ravel()]
        info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        info.p = [float(v) for v in np.hstack([K, np.zeros((3, 1))]).ravel()]
        self._info = info
        self.period = 1.0 / rate_hz
        self.sent: List[int] = []  # stamps (ns) of published images
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self, duration_s: float) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(duration_s,), daemon=True)
        self._thread.start()

    def join(self) -> None:
        if self._thread:
            self._thread.join()

    def stop(self) -> None:
        self._stop.set()
        self.join()

    def _run(self, duration_s: float) -> None:
        start = time.monotonic()
        i = 0
        while not self._stop.is_set():
            due = start + i * self.period
            if due - start >= duration_s:
                break
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            stamp_ns = time.time_ns()
            stamp = self._conversions.ns_to_stamp(stamp_ns)
            msg = self._images[i % len(self._images)]
            msg.header.stamp = stamp
            self._info.header.stamp = stamp
            self.info_pub.publish(self._info)
            self.image_pub.publish(msg)
            self.sent.append(stamp_ns)
            i += 1


def measure_node(args: argparse.Namespace, map_path: str, loc_cfg, frames, env: Dict[str, str],
                 work: Path) -> Dict[str, object]:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    from rclpy.executors import SingleThreadedExecutor
    from ace_ros.ros import conversions

    command = [sys.executable, '-m', args.node_module, '--ros-args',
               '-p', f'map_path:={map_path}', '-r', 'image:=/camera/image_raw',
               '-r', 'camera_info:=/camera/camera_info']
    for name in ('device', 'encoder', 'image_height', 'min_inliers'):
        command += ['-p', f'{name}:={getattr(loc_cfg, name)}']
    log_path = work / 'localization_node.log'
    log = open(log_path, 'w')
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    rclpy.init()
    node = rclpy.create_node('bench_camera')
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    poses: List[tuple] = []   # (stamp ns, received ns)
    diags: List[tuple] = []   # (received monotonic s, values)

    def on_pose(msg) -> None:
        poses.append((conversions.stamp_to_ns(msg.header.stamp), time.time_ns()))

    def on_diag(msg) -> None:
        values = _diag_values(msg)
        if values is not None:
            diags.append((time.monotonic(), values))

    node.create_subscription(PoseStamped, '/localization_node/pose', on_pose, 100)
    node.create_subscription(DiagnosticArray, '/diagnostics', on_diag, 10)
    camera = Camera(node, frames, args.rate)

    def spin_for(seconds: float, until=None) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if until is not None and until():
                return True
            executor.spin_once(timeout_sec=0.05)
        return bool(until and until())

    try:
        if not spin_for(60.0, lambda: camera.image_pub.get_subscription_count() > 0
                        or proc.poll() is not None) or proc.poll() is not None:
            raise RuntimeError(f'localization_node did not subscribe; log:\n'
                               f'{log_path.read_text()}')
        # Warm-up: the first frames pay for compiling (the node's warm-up, or each region's
        # head on first use), allocation and kernel selection. Stream until a pose comes
        # back, then `--warmup` s more.
        camera.start(600.0)
        spin_for(300.0, lambda: bool(poses) or proc.poll() is not None)
        first_pose_s = ((poses[0][1] - camera.sent[0]) / 1e9 if poses and camera.sent
                        else float('nan'))
        spin_for(args.warmup)
        camera.stop()
        spin_for(3.0)  # let the frame in flight finish
        spin_for(1.5)
        before = diags[-1][1] if diags else None
        before_stage_ms = {stage: _num(before, f'{stage}_ms_mean') for stage in STAGES}
        first_sent = len(camera.sent)
        measure_start_ns = time.time_ns()
        camera.start(args.duration)
        spin_for(args.duration + 0.2)
        camera.join()
        spin_for(3.0)  # the frame being localized, then one more diagnostics message
        after = diags[-1][1] if diags else None
    finally:
        camera.stop()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
        proc.send_signal(2)  # SIGINT: clean shutdown
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()

    sent = camera.sent[first_sent:]
    measured = [(s, r) for s, r in poses if s >= measure_start_ns]
    latency = [(r - s) / 1e6 for s, r in measured]
    # Each image sent in the measured window answered by a pose, or not (dropped as stale
    # or still waiting when it ended).
    answered = {s for s, _ in measured}
    counts = {}
    for key in ('received', 'processed', 'dropped_stale', 'published', 'rejected', 'failed'):
        counts[key] = _num(after, key) - _num(before, key)
    span_s = (sent[-1] - sent[0]) / 1e9 if len(sent) > 1 else float('nan')
    # /diagnostics gives means over the node's last WINDOW processed frames: remove the
    # warm-up frames still in that window (exact while all of them are in it).
    n_warm, n_meas = _num(before, 'processed'), counts['processed']
    in_window = max(0.0, min(n_warm, WINDOW - n_meas))
    stage_ms = {}
    for stage in STAGES:
        end = _num(after, f'{stage}_ms_mean')
        stage_ms[stage] = ((end * (in_window + min(n_meas, WINDOW))
                            - before_stage_ms[stage] * in_window) / min(n_meas, WINDOW))
    return {
        'published_images': len(sent), 'span_s': span_s,
        'input_rate_hz': (len(sent) - 1) / span_s if len(sent) > 1 else float('nan'),
        'node_received': counts['received'],
        'lost_in_transport': len(sent) - counts['received'],
        'dropped_stale': counts['dropped_stale'], 'processed': counts['processed'],
        'processed_rate_hz': counts['processed'] / span_s,
        'poses_published': counts['published'], 'poses_received': len(measured),
        'rejected': counts['rejected'], 'failed': counts['failed'],
        'node_input_rate_hz_diag': _num(after, 'input_rate_hz'),
        'node_processed_rate_hz_diag': _num(after, 'processed_rate_hz'),
        'answered': sum(s in answered for s in sent), 'first_pose_s': first_pose_s,
        'latency_ms': {'mean': float(np.mean(latency)) if latency else float('nan'),
                       'median': float(np.median(latency)) if latency else float('nan'),
                       'p90': percentile(latency, 90), 'p95': percentile(latency, 95),
                       'p99': percentile(latency, 99),
                       'max': max(latency, default=float('nan'))},
        'node_stage_ms_mean': stage_ms,
        'node_stage_ms_exact': bool(in_window in (0.0, n_warm)), 'log': str(log_path)}


def print_report(result: Dict[str, object]) -> None:
    engine, node = result['engine'], result['node']
    lat = node['latency_ms']
    print()
    print(f"== localization_node vs engine ({result['device']}, {result['backend']} backend, "
          f"torch threads "
          f"{result['torch_threads']}, {result['width']}x{result['height']} -> "
          f"{result['image_height']} px) ==")
    print(f"{'input rate (published / received by node)':44s} {node['input_rate_hz']:.1f} Hz "
          f"({node['published_images']} images in {node['span_s']:.1f} s; node received "
          f"{node['node_received']:.0f})")
    print(f"{'processed rate':44s} {node['processed_rate_hz']:.2f} Hz "
          f"({node['processed']:.0f} frames)")
    print(f"{'dropped as stale (newest-image policy)':44s} {node['dropped_stale']:.0f}")
    print(f"{'lost in transport (published - received)':44s} {node['lost_in_transport']:.0f}")
    print(f"{'poses published / received here':44s} {node['poses_published']:.0f} / "
          f"{node['poses_received']} (rejected {node['rejected']:.0f}, failed "
          f"{node['failed']:.0f})")
    print(f"{'images answered by a pose':44s} {node['answered']} of "
          f"{node['published_images']}")
    print(f"{'latency image stamp -> pose received':44s} mean {lat['mean']:.1f} ms, median "
          f"{lat['median']:.1f} ms, p90 {lat['p90']:.1f} ms, p95 {lat['p95']:.1f} ms, p99 "
          f"{lat['p99']:.1f} ms, max {lat['max']:.1f} ms")
    print(f"{'first image -> first pose (warm-up stream)':44s} {node['first_pose_s']:.2f} s")
    print()
    before, after = result['engine_total_ms_before_after']
    print(f'engine total: {before:.1f} ms before the node run, {after:.1f} ms after; the '
          'table uses their mean')
    exact = '' if node['node_stage_ms_exact'] else ' (approximate: warm-up frames in window)'
    print(f'node stages: /diagnostics window means, warm-up frames removed{exact}')
    print(f"{'stage':>8} | {'engine mean ms':>14} | {'node mean ms (diag)':>19} | ratio")
    for stage in STAGES:
        e, n = engine[stage]['mean'], node['node_stage_ms_mean'][stage]
        print(f'{stage:>8} | {e:14.1f} | {n:19.1f} | {n / e:5.2f}')
    print(f"{'e2e':>8} | {engine['total']['mean']:14.1f} | {lat['mean']:19.1f} | "
          f"{result['ratio_latency_to_engine']:5.2f}   (latency stamp -> pose / engine total)")
    verdict = 'within' if abs(result['ratio_latency_to_engine'] - 1) <= 0.2 else 'NOT within'
    print(f'node latency / engine ms = {result["ratio_latency_to_engine"]:.2f}: {verdict} the '
          f'20 % target')
    ratio = result['throughput_ratio']
    print(f"throughput ratio (node processed rate / min(input rate, engine rate "
          f"{result['engine_rate_hz']:.2f} Hz)) = {ratio:.2f}: "
          f"{'meets' if ratio >= 0.9 else 'BELOW'} the 0.9 target")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--map', help='map file (default: build a small synthetic one)')
    parser.add_argument('--seed', type=int, default=3, help='synthetic room seed')
    parser.add_argument('--map-frames', type=int, default=40)
    parser.add_argument('--map-iterations', type=int, default=30)
    parser.add_argument('--queries', type=int, default=30, help='distinct query frames')
    parser.add_argument('--engine-frames', type=int, default=30,
                        help='frames timed in-process (after 3 warm-up frames)')
    parser.add_argument('--rate', default='engine',
                        help="camera rate (Hz), or 'engine': the engine's own rate")
    parser.add_argument('--duration', type=float, default=20.0, help='measured stream (s)')
    parser.add_argument('--warmup', type=float, default=4.0,
                        help='unmeasured stream after the first pose (s)')
    parser.add_argument('--node-module', default='ace_ros.ros.localization_node',
                        help='the node to run (python -m): e.g. an older copy, to compare')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--encoder', default='random:0')
    parser.add_argument('--min-inliers', type=int, default=4)
    parser.add_argument('--domain', type=int, default=77, help='ROS_DOMAIN_ID')
    parser.add_argument('--workdir', help='where the map and node log go (default: temp)')
    parser.add_argument('--json', help='also write the results here')
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix='bench_ros_loc_'))
    work.mkdir(parents=True, exist_ok=True)
    env = ros_environment(args.domain, str(work / 'ros_log'))
    import torch
    from ace_ros.core.config import LocalizationConfig
    from ace_ros.data.synthetic import generate_frames, SyntheticSceneConfig

    scene = SyntheticSceneConfig(seed=args.seed, width=640, height=480,
                                 n_train=0 if args.map else args.map_frames,
                                 n_test=args.queries)
    queries = list(generate_frames(scene, 'test'))
    map_path = args.map or build_map(args, work, list(generate_frames(scene, 'train')))
    loc_cfg = LocalizationConfig(device=args.device, encoder=args.encoder, image_height=480,
                                 min_inliers=args.min_inliers)
    engine = measure_engine(map_path, loc_cfg, queries, args.engine_frames)
    print(f"engine: {engine['total']['mean']:.1f} ms/frame mean over {args.engine_frames} "
          f"frames (success {100 * engine['success_rate']['mean']:.0f} %)")
    engine_rate_hz = 1000.0 / engine['total']['mean']
    args.rate = engine_rate_hz if args.rate == 'engine' else float(args.rate)
    print(f'camera rate {args.rate:.2f} Hz (engine rate {engine_rate_hz:.2f} Hz)')
    node = measure_node(args, map_path, loc_cfg, queries, env, work)
    # Again after the node: the background load drifts; the comparison uses both runs.
    engine_after = measure_engine(map_path, loc_cfg, queries, args.engine_frames)
    print(f"engine again: {engine_after['total']['mean']:.1f} ms/frame")
    engine_runs = [engine['total']['mean'], engine_after['total']['mean']]
    backend = engine.pop('backend')
    engine_after.pop('backend')
    engine = {stage: {k: (engine[stage][k] + engine_after[stage][k]) / 2
                      for k in engine[stage]} for stage in engine}
    result = {
        'map': map_path, 'device': args.device, 'encoder': args.encoder, 'backend': backend,
        'torch_threads': torch.get_num_threads(), 'width': 640, 'height': 480,
        'image_height': 480, 'rate_hz': args.rate, 'duration_s': args.duration,
        'min_inliers': args.min_inliers, 'engine': engine, 'node': node,
        'engine_total_ms_before_after': engine_runs,
        'ratio_latency_to_engine': node['latency_ms']['mean'] / engine['total']['mean'],
        'engine_rate_hz': 1000.0 / engine['total']['mean'],
        'throughput_ratio': node['processed_rate_hz'] / min(
            node['input_rate_hz'], 1000.0 / engine['total']['mean']),
        'ratio_node_total_to_engine': (node['node_stage_ms_mean']['total']
                                       / engine['total']['mean'])}
    print_report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, sort_keys=True) + '\n')


if __name__ == '__main__':
    main()
