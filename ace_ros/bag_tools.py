"""Write posed frames as a ROS bag: `export_bag(frames, path, ExportOptions())`.

Uses the pure-Python `rosbags` library (no ROS needed); `ace_ros.ros.bag_player` replays bags.

Exported topics (names and frame ids are `ExportOptions` fields):
- `image_topic`: sensor_msgs/Image, rgb8, frame_id = `camera_frame` (the optical frame);
- `camera_info_topic`: sensor_msgs/CameraInfo with K, P = [K | 0], no distortion;
- `pose_topic`: geometry_msgs/PoseStamped, `world_frame` -> camera optical frame;
- /tf: `world_frame` -> `camera_frame` per frame; with a `base_frame`, /tf carries
  `world_frame` -> `base_frame` instead and /tf_static the REP-103 optical mount
  `base_frame` -> `camera_frame` (z forward, x right, y down in a body x forward, z up).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
import numpy.typing as npt
import yaml

from ace_ros.core.geometry import invert_pose, make_pose, pose_to_translation_quaternion
from ace_ros.core.types import Frame
from ace_ros.data import messages

_logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

STORAGES = ('mcap', 'sqlite3', 'ros1')
#: base_from_optical for a camera looking along the body's x axis (REP-103).
OPTICAL_MOUNT = make_pose(np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),
                          np.zeros(3))


@dataclass(frozen=True)
class ExportOptions:
    """How `export_bag` names and stamps what it writes; field names are the CLI flags."""

    storage: str = field(default='mcap', metadata={'help': f'one of {STORAGES}'})
    image_topic: str = field(default='/camera/image_raw', metadata={'help': 'Image topic'})
    camera_info_topic: str = field(default='/camera/camera_info',
                                   metadata={'help': 'CameraInfo topic'})
    pose_topic: str = field(default='/camera/pose',
                            metadata={'help': "PoseStamped topic ('' for none)"})
    world_frame: str = field(default='map', metadata={'help': 'fixed frame of the poses'})
    camera_frame: str = field(default='camera_optical_frame',
                              metadata={'help': "camera optical frame (the images' frame_id)"})
    base_frame: str = field(default='', metadata={
        'help': "if set, TF goes world -> BASE (/tf) -> camera (/tf_static optical mount)"})
    tf: bool = field(default=True, metadata={'help': 'write /tf (and /tf_static)'})
    rate: float = field(default=30.0, metadata={
        'help': 'frame rate (Hz) for sources without stamps (ACE layout, 7-Scenes, synthetic)'})
    start_time: float = field(default=-1.0, metadata={
        'help': 'stamp (s) of the first frame; < 0: keep the source stamps, or 1.0 s when the '
                'source has none (ROS time 0 means "latest" to TF)'})

    def __post_init__(self) -> None:
        if self.storage not in STORAGES:
            raise ValueError(f'storage must be one of {STORAGES}, got {self.storage!r}')
        if self.rate <= 0:
            raise ValueError(f'rate must be > 0 Hz, got {self.rate}')
        for name in ('image_topic', 'camera_info_topic', 'world_frame', 'camera_frame'):
            if not getattr(self, name):
                raise ValueError(f'{name} must not be empty')


@dataclass
class ExportReport:
    """What `export_bag` wrote."""

    path: str
    frames: int = 0
    posed_frames: int = 0
    first_stamp: float = 0.0
    last_stamp: float = 0.0
    bytes: int = 0


def export_bag(frames: Iterable[Frame], output: str | Path, options: ExportOptions,
               stamped: bool = True,
               progress: Optional[Callable[[int], None]] = None) -> ExportReport:
    """Write `frames` (streamed, in order) as a bag at `output`.

    Args:
        frames: the frames; their stamps must increase.
        output: rosbag2 folder to create (or a `.bag` file for storage 'ros1').
        options: topics, frame ids, storage, timing.
        stamped: whether `Frame.stamp` holds real times; when False frames are stamped
            `start_time + i / rate`. Sources whose stamps are all 0 are treated as unstamped.
        progress: called with the number of frames written so far.

    Raises:
        ValueError: for stamps that do not increase, or an output that exists.
    """
    output = Path(output)
    if output.exists():
        raise ValueError(f'{output} exists already; give a new path')
    report = ExportReport(str(output))
    writer = _Writer(output, options.storage)
    try:
        connections = _connections(writer, options)
        for stamp, frame in _stamped(frames, options, stamped):
            if report.frames and stamp <= report.last_stamp:
                raise ValueError(f'frame {frame.name}: stamp {stamp:.9f} s does not follow '
                                 f'the previous frame ({report.last_stamp:.9f} s)')
            if not report.frames:
                report.first_stamp = stamp
                if options.tf and options.base_frame:
                    writer.write(connections['/tf_static'], stamp, _tf_message(
                        writer, stamp, options.base_frame, options.camera_frame, OPTICAL_MOUNT))
            _write_frame(writer, connections, options, frame, stamp)
            report.frames += 1
            report.posed_frames += frame.world_from_cam is not None
            report.last_stamp = stamp
            if progress:
                progress(report.frames)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    if not report.frames:
        raise ValueError('no frames to export')
    report.bytes = sum(p.stat().st_size for p in output.rglob('*') if p.is_file()) \
        if output.is_dir() else output.stat().st_size
    _logger.info('wrote %d frames (%d with poses, %.3f..%.3f s) to %s (%.1f MB)', report.frames,
                 report.posed_frames, report.first_stamp, report.last_stamp, output,
                 report.bytes / 1e6)
    return report


def _stamped(frames: Iterable[Frame], options: ExportOptions,
             stamped: bool) -> Iterator[tuple[float, Frame]]:
    """(stamp s, frame) pairs: source stamps (shifted to start_time if given) or a fixed rate."""
    iterator = iter(frames)
    head = [f for _, f in zip(range(2), iterator)]
    if stamped and all(f.stamp == 0.0 for f in head):
        stamped = False  # readers without time (ACE layout, 7-Scenes) leave stamps at 0
    start = options.start_time if options.start_time >= 0 else None
    offset = 0.0
    for index, frame in enumerate(_chain(head, iterator)):
        if not stamped:
            yield (1.0 if start is None else start) + index / options.rate, frame
            continue
        if index == 0 and start is not None:
            offset = start - frame.stamp
        yield frame.stamp + offset, frame


def _chain(head: list, rest: Iterator) -> Iterator:
    yield from head
    yield from rest


class _Writer:
    """rosbag2 (mcap / sqlite3) or ROS 1 writer behind one small interface."""

    def __init__(self, path: Path, storage: str) -> None:
        from rosbags.typesys import get_typestore, Stores
        self.ros1 = storage == 'ros1'
        if self.ros1:
            from rosbags.rosbag1 import Writer as Writer1
            from rosbags.typesys import get_types_from_msg
            self.typestore = get_typestore(Stores.ROS1_NOETIC)
            # The noetic store lacks tf2_msgs; its TFMessage is this one line.
            self.typestore.register(get_types_from_msg(
                'geometry_msgs/TransformStamped[] transforms', 'tf2_msgs/msg/TFMessage'))
            self._bag: Any = Writer1(path)
        else:
            from rosbags.rosbag2 import StoragePlugin, Writer as Writer2
            self.typestore = get_typestore(Stores.ROS2_KILTED)
            plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
            self._bag = Writer2(path, version=Writer2.VERSION_LATEST, storage_plugin=plugin)
        self._bag.open()

    def connection(self, topic: str, msgtype: str, latched: bool = False) -> Any:
        if self.ros1:
            return self._bag.add_connection(topic, msgtype, typestore=self.typestore,
                                            latching=int(latched))
        from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness,
                                        QosReliability, QosTime)
        default = QosTime(0, 0)
        qos = Qos(QosHistory.KEEP_LAST, 100 if latched else 10, QosReliability.RELIABLE,
                  QosDurability.TRANSIENT_LOCAL if latched else QosDurability.VOLATILE,
                  default, default, QosLiveliness.AUTOMATIC, default, False)
        return self._bag.add_connection(topic, msgtype, typestore=self.typestore,
                                        offered_qos_profiles=[qos])

    def header(self, stamp: float, frame_id: str) -> Any:
        types = self.typestore.types
        sec, nanosec = messages.ns_to_sec_nanosec(int(round(stamp * 1e9)))
        time_msg = types['builtin_interfaces/msg/Time'](sec=sec, nanosec=nanosec)
        extra = {'seq': 0} if self.ros1 else {}
        return types['std_msgs/msg/Header'](stamp=time_msg, frame_id=frame_id, **extra)

    def write(self, connection: Any, stamp: float, msg: Any) -> None:
        raw = (self.typestore.serialize_ros1 if self.ros1 else self.typestore.serialize_cdr)(
            msg, connection.msgtype)
        self._bag.write(connection, int(round(stamp * 1e9)), raw)

    def close(self) -> None:
        self._bag.close()

    def abort(self) -> None:
        if hasattr(self._bag, 'abort'):
            self._bag.abort()


def _connections(writer: _Writer, options: ExportOptions) -> dict[str, Any]:
    connections = {
        'image': writer.connection(options.image_topic, 'sensor_msgs/msg/Image'),
        'camera_info': writer.connection(options.camera_info_topic,
                                         'sensor_msgs/msg/CameraInfo')}
    if options.pose_topic:
        connections['pose'] = writer.connection(options.pose_topic,
                                                'geometry_msgs/msg/PoseStamped')
    if options.tf:
        connections['/tf'] = writer.connection('/tf', 'tf2_msgs/msg/TFMessage')
        if options.base_frame:
            connections['/tf_static'] = writer.connection('/tf_static', 'tf2_msgs/msg/TFMessage',
                                                          latched=True)
    return connections


def _write_frame(writer: _Writer, connections: dict, options: ExportOptions, frame: Frame,
                 stamp: float) -> None:
    types = writer.typestore.types
    header = writer.header(stamp, options.camera_frame)
    height, width = frame.image.shape[:2]
    rows = messages.encode_rgb(frame.image, 'rgb8')
    writer.write(connections['image'], stamp, types['sensor_msgs/msg/Image'](
        header=header, height=height, width=width, encoding='rgb8', is_bigendian=0,
        step=rows.shape[1], data=rows.reshape(-1)))
    projection = np.hstack([frame.K, np.zeros((3, 1))])
    arrays = {'d': np.zeros(5), 'k': frame.K.reshape(-1), 'r': np.eye(3).reshape(-1),
              'p': projection.reshape(-1)}
    if writer.ros1:
        arrays = {key.upper(): value for key, value in arrays.items()}
    roi = types['sensor_msgs/msg/RegionOfInterest'](x_offset=0, y_offset=0, height=0, width=0,
                                                    do_rectify=False)
    writer.write(connections['camera_info'], stamp, types['sensor_msgs/msg/CameraInfo'](
        header=header, height=height, width=width, distortion_model='plumb_bob',
        binning_x=0, binning_y=0, roi=roi, **arrays))
    world_from_cam = frame.world_from_cam
    if world_from_cam is None:
        return
    if 'pose' in connections:
        writer.write(connections['pose'], stamp, types['geometry_msgs/msg/PoseStamped'](
            header=writer.header(stamp, options.world_frame), pose=_pose_msg(types,
                                                                             world_from_cam)))
    if options.tf:
        if options.base_frame:
            world_from_base = world_from_cam @ invert_pose(OPTICAL_MOUNT)
            writer.write(connections['/tf'], stamp, _tf_message(
                writer, stamp, options.world_frame, options.base_frame, world_from_base))
        else:
            writer.write(connections['/tf'], stamp, _tf_message(
                writer, stamp, options.world_frame, options.camera_frame, world_from_cam))


def _pose_msg(types: Any, pose: FloatArray) -> Any:
    t, q = pose_to_translation_quaternion(pose)
    return types['geometry_msgs/msg/Pose'](
        position=types['geometry_msgs/msg/Point'](x=t[0], y=t[1], z=t[2]),
        orientation=types['geometry_msgs/msg/Quaternion'](x=q[0], y=q[1], z=q[2], w=q[3]))


def _tf_message(writer: _Writer, stamp: float, parent: str, child: str,
                parent_from_child: FloatArray) -> Any:
    types = writer.typestore.types
    t, q = pose_to_translation_quaternion(parent_from_child)
    transform = types['geometry_msgs/msg/Transform'](
        translation=types['geometry_msgs/msg/Vector3'](x=t[0], y=t[1], z=t[2]),
        rotation=types['geometry_msgs/msg/Quaternion'](x=q[0], y=q[1], z=q[2], w=q[3]))
    stamped = types['geometry_msgs/msg/TransformStamped'](
        header=writer.header(stamp, parent), child_frame_id=child, transform=transform)
    return types['tf2_msgs/msg/TFMessage'](transforms=[stamped])


def is_synthetic_spec(text: str) -> bool:
    """Whether a SOURCE argument names a generated room: `synthetic[:...]`."""
    return text == 'synthetic' or text.startswith('synthetic:')


def parse_synthetic_spec(spec: str) -> Any:
    """`synthetic`, `synthetic:SEED` or `synthetic:KEY=VALUE,...` -> SyntheticSceneConfig.

    Keys are SyntheticSceneConfig fields, e.g. `synthetic:seed=3,n_train=50,width=320`.
    """
    from ace_ros.core.config import config_from_dict
    from ace_ros.data.synthetic import SyntheticSceneConfig
    body = spec.partition(':')[2]
    values: dict[str, Any] = {}
    for item in filter(None, body.split(',')):
        key, sep, value = item.partition('=')
        if not sep:
            key, value = 'seed', item
        # YAML scalars: '3' -> int, '0.5' -> float, 'true' -> bool.
        values[key.strip()] = yaml.safe_load(value)
    return config_from_dict(SyntheticSceneConfig, values, spec)


def synthetic_frames(cfg: Any, split: Optional[str] = None) -> Iterator[Frame]:
    """Render the frames of `split` (None: train then test) without writing images."""
    from ace_ros.data.synthetic import generate_frames
    for name in ([split] if split else ['train', 'test']):
        yield from generate_frames(cfg, name)
