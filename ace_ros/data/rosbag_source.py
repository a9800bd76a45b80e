"""Reader of ROS bags as a FrameSource: rosbag2 (mcap or sqlite3 folders) and ROS 1 `.bag`.

Uses the pure-Python `rosbags` library, so no ROS installation is needed. Opening a bag scans
the chosen topics once (image headers, camera infos, poses, TF); images are decoded only when
a frame is loaded, and frames load in bag order through one open message stream, so reading
a whole bag is a single sequential pass (deserialisation is zero-copy). Loading a frame
decodes and checks its image, then keeps only what the frame needs besides: the frame is a
`LazyFrame` that reads its message from the bag again when its image is used once more
(the last message read is kept, so using a frame's image right after loading it reads
nothing), so holding all the frames of a bag does not hold their images.

- Messages are decoded by `ace_ros.data.messages`, the nodes' decoder too.
- Images: sensor_msgs/Image (the encodings of `messages.SUPPORTED_ENCODINGS`) or
  sensor_msgs/CompressedImage (jpeg, png: what OpenCV decodes); other encodings and
  compressed depth are refused when the bag is opened, 16-bit compressed payloads when read.
- Intrinsics: sensor_msgs/CameraInfo in effect at the image stamp (the latest one at or
  before it, else the first); plumb_bob / rational_polynomial / equidistant distortion is
  removed keeping K (`messages.Rectifier`).
- Poses (`world_from_cam` of the image's optical frame), from one of:
  a pose topic (geometry_msgs/PoseStamped, PoseWithCovarianceStamped: the camera's optical
  frame; nav_msgs/Odometry: its child_frame_id, chained to the camera through TF when that
  differs), or TF (/tf and /tf_static) from `world_frame` to the camera frame. Poses are
  interpolated at the image stamp between the two samples bracketing it when those are at most
  `max_pose_gap_s` apart; other frames get no pose (counted and logged, never guessed).
- Frames are named by their header stamp `SEC.NANOSEC`; `Frame.stamp` is that stamp in s.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
import functools
import logging
from pathlib import Path
import threading
from typing import Any, Iterator, Optional

import numpy as np
import numpy.typing as npt

from ace_ros.core.tf_tree import TfTree, TransformError
from ace_ros.core.types import Frame
from ace_ros.data import messages
from ace_ros.data.base import FrameSource, LazyFrame
from ace_ros.data.messages import Rectifier
from ace_ros.data.tum import interpolate_trajectory

_logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

IMAGE = 'sensor_msgs/msg/Image'
COMPRESSED_IMAGE = 'sensor_msgs/msg/CompressedImage'
CAMERA_INFO = 'sensor_msgs/msg/CameraInfo'
POSE_STAMPED = 'geometry_msgs/msg/PoseStamped'
POSE_WITH_COVARIANCE = 'geometry_msgs/msg/PoseWithCovarianceStamped'
ODOMETRY = 'nav_msgs/msg/Odometry'
TF_MESSAGE = 'tf2_msgs/msg/TFMessage'
IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)
POSE_TYPES = (POSE_STAMPED, POSE_WITH_COVARIANCE, ODOMETRY)
TF_TOPICS = ('/tf', '/tf_static')
BAG_SUFFIXES = ('.bag', '.mcap', '.db3')
#: A frame this many images ahead of the open stream is reached by reading on; further
#: ahead (or behind) the stream is reopened at the frame's time.
_READ_AHEAD = 64


def is_rosbag(path: str | Path) -> bool:
    """Whether `path` is a ROS 1 `.bag`, a rosbag2 folder, or a file inside one."""
    path = Path(path)
    if path.is_file():
        return path.suffix in BAG_SUFFIXES
    return path.is_dir() and ((path / 'metadata.yaml').is_file()
                              or any(p.suffix in ('.mcap', '.db3') for p in path.iterdir()))


def bag_path(path: str | Path) -> Path:
    """The path `rosbags` opens for `path`: a `.bag` file or a rosbag2 folder.

    Raises:
        ValueError: for a rosbag2 storage file or folder without metadata.yaml.
    """
    path = Path(path)
    if path.is_file() and path.suffix == '.bag':
        return path
    folder = path.parent if path.is_file() else path
    if not (folder / 'metadata.yaml').is_file():
        raise ValueError(f'{path}: rosbag2 storage without {folder / "metadata.yaml"}; '
                         f'rosbags needs it (`ros2 bag reindex {folder}` recreates it)')
    return folder


class RosbagSource(FrameSource):
    """Posed frames of one camera in a ROS bag, in bag order.

    Args:
        root: a ROS 1 `.bag`, a rosbag2 folder (metadata.yaml + .mcap / .db3 files), or a
            storage file inside such a folder.
        image_topic: Image or CompressedImage topic; None: the only one in the bag.
        camera_info_topic: CameraInfo topic; None: the only one in the bag.
        pose_topic: PoseStamped / PoseWithCovarianceStamped / Odometry topic for poses.
        world_frame: fixed TF frame: poses come from TF (`world_frame` -> camera frame)
            instead of a pose topic. With neither, the only pose topic is used if there is
            one, else frames have no poses.
        camera_frame: the camera's optical frame in TF; None: the images' header frame_id.
        max_pose_gap_s: largest spacing (s) of the two pose (or TF) samples bracketing an
            image stamp for the pose to be interpolated there.

    Raises:
        ValueError: for missing or ambiguous topics (the message lists what the bag has),
            unsupported encodings or distortion models, or a TF tree without the chain.
    """

    def __init__(self, root: str | Path, image_topic: Optional[str] = None,
                 camera_info_topic: Optional[str] = None, pose_topic: Optional[str] = None,
                 world_frame: Optional[str] = None, camera_frame: Optional[str] = None,
                 max_pose_gap_s: float = 0.05) -> None:
        if max_pose_gap_s <= 0:
            raise ValueError(f'max_pose_gap_s must be > 0, got {max_pose_gap_s}')
        if pose_topic and world_frame:
            raise ValueError(f'give a pose topic or a TF world frame, not both; got '
                             f'pose_topic={pose_topic!r} and world_frame={world_frame!r}')
        self._path = bag_path(root)
        self._reader: Any = None
        self._stream: Optional[Iterator] = None
        self._next_ordinal = 0
        self._last: Optional[tuple[int, Any]] = None  # (ordinal, message) last read
        # Frames' images are read back from any thread (triangulation's workers).
        self._lock = threading.Lock()
        with contextlib.closing(open_reader(self._path)) as reader:
            topics = {name: info.msgtype for name, info in reader.topics.items()}
            self.image_topic = _pick_topic(self._path, topics, image_topic, IMAGE_TYPES,
                                           'image', '--image-topic')
            self.camera_info_topic = _pick_topic(self._path, topics, camera_info_topic,
                                                 (CAMERA_INFO,), 'camera info',
                                                 '--camera-info-topic')
            if not pose_topic and not world_frame:
                pose_topic = _auto_pose_topic(self._path, topics)
            elif pose_topic:
                _pick_topic(self._path, topics, pose_topic, POSE_TYPES, 'pose', '--pose-topic')
            self.pose_topic, self.world_frame = pose_topic, world_frame
            wanted = {self.image_topic, self.camera_info_topic, pose_topic}
            if world_frame or (pose_topic and topics[pose_topic] == ODOMETRY):
                wanted.update(TF_TOPICS)
            scan = _scan(reader, [c for c in reader.connections if c.topic in wanted],
                         self.image_topic, self.camera_info_topic, pose_topic)
        if not scan.images:
            raise ValueError(f'{self._path}: topic {self.image_topic} has no messages')
        self._log_times = np.array([m[0] for m in scan.images], dtype=np.int64)
        self._ordinals, stamps_ns, frame_ids = _unique_stamps(self._path, scan.images)
        self._stamps_ns = stamps_ns
        self.stamps = stamps_ns / 1e9
        names = [f'{s // 1_000_000_000}.{s % 1_000_000_000:09d}' for s in stamps_ns]
        super().__init__(self._path, names, has_poses=bool(pose_topic or world_frame))

        self.camera_frame = camera_frame or _single_frame_id(self._path, self.image_topic,
                                                             frame_ids)
        self._calibrations, self._calibration_index = _calibrations(
            self._path, self.camera_info_topic, scan, stamps_ns)
        #: The frame the poses are given in (TF world frame, or the pose topic's frame_id).
        self.pose_frame = (world_frame or scan.pose_frame.lstrip('/')) if self.has_poses else ''
        self.poses: list[Optional[FloatArray]] = [None] * len(self)
        self.frames_without_pose = len(self)
        if self.has_poses:
            self.poses = self._match_poses(scan, max_pose_gap_s)

    def _match_poses(self, scan: _Scan, max_gap_s: float) -> list[Optional[FloatArray]]:
        if self.world_frame:
            what = f'TF {self.world_frame} -> {self.camera_frame}'
            poses = self._tf_lookup(scan.tf, self.world_frame, self.camera_frame, max_gap_s)
        else:
            if not scan.poses:
                raise ValueError(f'{self._path}: pose topic {self.pose_topic} has no messages')
            what = f'pose topic {self.pose_topic}'
            scan.poses.sort(key=lambda p: p[0])
            times = np.array([p[0] for p in scan.poses])
            keep = np.append(times[1:] != times[:-1], True)
            poses = interpolate_trajectory(times[keep], [p[1] for p, k in zip(scan.poses, keep)
                                                         if k], self.stamps, max_gap_s)
            child = scan.pose_child_frame.lstrip('/')
            if child and child != self.camera_frame.lstrip('/'):
                # Odometry gives the pose of its child frame (e.g. base_link): chain to the
                # camera through TF (usually a static mount transform).
                what += f' ({child}) + TF {child} -> {self.camera_frame}'
                if not scan.tf.frames():
                    raise ValueError(
                        f'{self._path}: {self.pose_topic} gives poses of {child!r} but images '
                        f'are in {self.camera_frame!r}, and the bag has no TF to chain them')
                mounts = self._tf_lookup(scan.tf, child, self.camera_frame, max_gap_s)
                poses = [None if p is None or m is None else p @ m
                         for p, m in zip(poses, mounts)]
        self.frames_without_pose = sum(p is None for p in poses)
        if self.frames_without_pose:
            _logger.warning('%s: %d of %d frames have no pose from %s within %.3f s of the '
                            'image stamp', self._path, self.frames_without_pose, len(self),
                            what, max_gap_s)
        else:
            _logger.info('%s: %d frames, poses from %s', self._path, len(self), what)
        return poses

    def _tf_lookup(self, tf: TfTree, target: str, source: str,
                   max_gap_s: float) -> list[Optional[FloatArray]]:
        """`target_from_source` at the image stamps, None where TF has no data close enough.

        Raises:
            ValueError: if the two frames are not chained in the bag's TF.
        """
        try:
            return tf.lookup_many(target, source, self._stamps_ns, max_gap_s)
        except TransformError as error:
            raise ValueError(f'{self._path}: TF has no chain between {target!r} and '
                             f'{source!r}: {error}') from error

    def _load(self, index: int) -> Frame:
        # Decoded and checked now; the frame reads it again when used (see the module doc).
        image = self._image(index)
        pose = self.poses[index]
        calibration = self._calibrations[self._calibration_index[index]]
        return LazyFrame(self.names[index], functools.partial(self._image, index),
                         image.shape[1], image.shape[0], calibration.K.copy(),
                         None if pose is None else pose.copy(), float(self.stamps[index]),
                         where=f'{self._path} {self.image_topic} image {self.names[index]}',
                         image=image)

    def _image(self, index: int) -> npt.NDArray[np.uint8]:
        """Frame `index`'s image, read from the bag, decoded, checked and rectified."""
        with self._lock:
            msg = self._message(self._ordinals[index])
        if messages.header_stamp_ns(msg) != self._stamps_ns[index]:
            raise RuntimeError(f'{self._path}: bag order changed between reads at frame '
                               f'{self.names[index]}')
        calibration = self._calibrations[self._calibration_index[index]]
        image = _decode(msg, self.image_topic)
        height, width = image.shape[:2]
        if calibration.width and (width, height) != (calibration.width, calibration.height):
            raise ValueError(f'{self._path}: image {self.names[index]} on {self.image_topic} is '
                             f'{width}x{height} but the camera info is for '
                             f'{calibration.width}x{calibration.height}')
        return calibration.rectify(image)

    def _message(self, ordinal: int) -> Any:
        """The deserialised image message number `ordinal` (in bag order) of the topic."""
        if self._last is not None and self._last[0] == ordinal:
            return self._last[1]
        if self._reader is None:
            self._reader = open_reader(self._path)
            self._connections = [c for c in self._reader.connections
                                 if c.topic == self.image_topic]
        if (self._stream is None or ordinal < self._next_ordinal
                or ordinal >= self._next_ordinal + _READ_AHEAD):
            start = int(self._log_times[ordinal])
            self._stream = self._reader.messages(connections=self._connections, start=start)
            self._next_ordinal = int(np.searchsorted(self._log_times, start, side='left'))
        for connection, _, raw in self._stream:
            current, self._next_ordinal = self._next_ordinal, self._next_ordinal + 1
            if current == ordinal:
                msg = self._reader.deserialize(raw, connection.msgtype)
                self._last = (ordinal, msg)
                return msg
        raise RuntimeError(f'{self._path}: image message {ordinal} missing on second read')

    def close(self) -> None:
        """Close the bag files held open for loading (reopened on the next load)."""
        self._stream = None
        self._last = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self) -> RosbagSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class _Scan:
    images: list  # (log time ns, stamp ns, frame_id) in bag order
    camera_infos: list  # (stamp ns, index into info_messages)
    info_messages: list  # the distinct calibrations: the first CameraInfo of each
    info_keys: dict  # messages.camera_info_key -> index into info_messages
    poses: list  # (stamp s, world_from_child)
    pose_child_frame: str
    pose_frame: str
    tf: TfTree


def open_reader(path: Path) -> Any:
    """An opened `rosbags` AnyReader for a `bag_path` result; close it when done.

    Raises:
        ValueError: if the bag cannot be read (corrupt, unknown storage, ...).
    """
    from rosbags.highlevel import AnyReader, AnyReaderError
    from rosbags.typesys import get_typestore, Stores
    # Bags normally embed their message definitions; the store covers those that do not.
    store = Stores.ROS1_NOETIC if path.suffix == '.bag' else Stores.LATEST
    reader = AnyReader([path], default_typestore=get_typestore(store))
    try:
        reader.open()
    except AnyReaderError as error:
        raise ValueError(f'{path}: cannot read the bag: {error}') from error
    return reader


def _pick_topic(path: Path, topics: dict[str, str], given: Optional[str],
                types: tuple[str, ...], what: str, flag: str) -> str:
    """`given` checked against the bag, or the only topic of `types`."""
    listing = ', '.join(f'{t} ({m})' for t, m in sorted(topics.items())) or 'none'
    if given:
        if given not in topics:
            raise ValueError(f'{path}: no topic {given}; the bag has: {listing}')
        if topics[given] not in types:
            raise ValueError(f'{path}: {given} is {topics[given]}, expected one of {types} '
                             f'for the {what} topic')
        return given
    candidates = sorted(t for t, m in topics.items() if m in types)
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ValueError(f'{path}: no {what} topic ({" or ".join(types)}); the bag has: '
                         f'{listing}')
    raise ValueError(f'{path}: {len(candidates)} {what} topics {candidates}; choose one '
                     f'with {flag}')


def _auto_pose_topic(path: Path, topics: dict[str, str]) -> Optional[str]:
    candidates = sorted(t for t, m in topics.items() if m in POSE_TYPES)
    if len(candidates) > 1:
        raise ValueError(f'{path}: {len(candidates)} pose topics {candidates}; choose one with '
                         f'--pose-topic, or use TF with --world-frame')
    if not candidates:
        tf = ' (it has TF: give --world-frame to take poses from it)' if any(
            t in topics for t in TF_TOPICS) else ''
        _logger.warning('%s: no pose topic (%s) and no TF world frame given: frames have no '
                        'poses%s', path, ', '.join(POSE_TYPES), tf)
        return None
    _logger.info('%s: poses from %s (%s)', path, candidates[0], topics[candidates[0]])
    return candidates[0]


def _scan(reader: Any, connections: list, image_topic: str, info_topic: str,
          pose_topic: Optional[str]) -> _Scan:
    """One pass over the chosen topics, keeping headers and small messages only."""
    scan = _Scan([], [], [], {}, [], '', '', TfTree(cache_duration_s=None))  # the whole bag
    ignored: set[tuple[str, str]] = set()
    bad_poses = 0
    for connection, log_time, raw in reader.messages(connections=connections):
        msg = reader.deserialize(raw, connection.msgtype)
        topic = connection.topic
        if topic == image_topic:
            try:
                if connection.msgtype == COMPRESSED_IMAGE:
                    messages.check_compressed_format(msg.format)
                else:
                    messages.check_encoding(msg.encoding)
            except messages.UnsupportedImageError as error:
                raise ValueError(f'{image_topic}: {error}') from error
            scan.images.append((log_time, messages.header_stamp_ns(msg), msg.header.frame_id))
        elif topic == info_topic:
            index = scan.info_keys.setdefault(messages.camera_info_key(msg),
                                              len(scan.info_messages))
            if index == len(scan.info_messages):
                scan.info_messages.append(msg)
            scan.camera_infos.append((messages.header_stamp_ns(msg), index))
        elif topic == pose_topic:
            to_matrix = (messages.odometry_to_matrix if connection.msgtype == ODOMETRY
                         else messages.pose_stamped_to_matrix)
            try:
                world_from_child = to_matrix(msg)
            except ValueError as error:  # a bad quaternion: that sample is not a pose
                if not bad_poses:
                    _logger.warning('%s: skipping poses that are not valid, the first at '
                                    '%d ns: %s', topic, messages.header_stamp_ns(msg), error)
                bad_poses += 1
                continue
            scan.poses.append((messages.header_stamp_ns(msg) / 1e9, world_from_child))
            scan.pose_frame = msg.header.frame_id
            if connection.msgtype == ODOMETRY:
                scan.pose_child_frame = msg.child_frame_id
        elif topic in TF_TOPICS:
            for tf in msg.transforms:
                edge = (tf.header.frame_id, tf.child_frame_id)
                try:
                    scan.tf.set_transform(*edge, messages.header_stamp_ns(tf),
                                          messages.transform_to_matrix(tf.transform),
                                          static=topic == '/tf_static')
                except ValueError as error:  # e.g. a frame its own parent; tf2 skips it too
                    if edge not in ignored:
                        ignored.add(edge)
                        _logger.warning('%s: ignoring TF %r -> %r: %s', topic, *edge, error)
    if bad_poses:
        _logger.warning('%s: %d poses skipped as not valid', pose_topic, bad_poses)
    return scan


def _unique_stamps(path: Path, images: list) -> tuple[list[int], npt.NDArray[np.int64], list]:
    """Ordinals, stamps (ns) and frame ids of the images, dropping repeated header stamps."""
    seen: set = set()
    ordinals = []
    for ordinal, image in enumerate(images):
        if image[1] not in seen:
            seen.add(image[1])
            ordinals.append(ordinal)
    if len(ordinals) < len(images):
        _logger.warning('%s: %d images repeat an earlier header stamp; keeping the first of '
                        'each', path, len(images) - len(ordinals))
    stamps = np.array([images[o][1] for o in ordinals], dtype=np.int64)
    return ordinals, stamps, [images[o][2] for o in ordinals]


def _single_frame_id(path: Path, topic: str, frame_ids: list) -> str:
    distinct = sorted(set(frame_ids))
    if len(distinct) != 1:
        raise ValueError(f'{path}: images on {topic} carry {len(distinct)} frame ids '
                         f'{distinct[:5]}; give the camera frame with --camera-frame')
    return distinct[0]


def _calibrations(path: Path, topic: str, scan: _Scan,
                  stamps_ns: npt.NDArray[np.int64]) -> tuple[list[Rectifier], list[int]]:
    """Distinct calibrations and, per image, the one in effect at its stamp."""
    infos = scan.camera_infos
    if not infos:
        raise ValueError(f'{path}: camera info topic {topic} has no messages')
    infos.sort(key=lambda info: info[0])
    try:
        calibrations = [Rectifier.from_camera_info(msg) for msg in scan.info_messages]
    except ValueError as error:
        raise ValueError(f'{topic}: {error}') from error
    per_info = [index for _, index in infos]
    if len(calibrations) > 1:
        _logger.info('%s: %d distinct calibrations on %s; each image uses the latest at its '
                     'stamp', path, len(calibrations), topic)
    info_stamps = np.array([info[0] for info in infos], dtype=np.int64)
    latest = np.searchsorted(info_stamps, stamps_ns, side='right') - 1
    return calibrations, [per_info[max(int(i), 0)] for i in latest]


def _decode(msg: Any, topic: str) -> npt.NDArray[np.uint8]:
    """Image or CompressedImage message -> (H, W, 3) uint8 RGB (a new array)."""
    try:
        return messages.decode_image(msg)
    except ValueError as error:
        raise ValueError(f'{topic}: {error} (image at {messages.header_stamp_ns(msg)} ns)') \
            from error
