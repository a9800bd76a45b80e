"""ROS message <-> numpy conversions: images, intrinsics, poses, covariance, stamps.

The only module that reads or writes message fields such as ``.orientation``; the pose and
quaternion math itself is `ace_ros.core.geometry` (quaternions are x, y, z, w there too).

Decisions:
- Images are decoded with numpy, not cv_bridge: ROS 2's cv_bridge is not on PyPI (the PyPI
  ``cv-bridge`` is a ROS 1 shim that breaks with numpy 2), and three encodings need no
  library. rgb8, bgr8 and mono8 are accepted; anything else (mono16, 16UC1, 32FC1, bayer_*,
  yuv422, ...) is refused with a message naming the encoding, since the encoder needs
  8-bit intensities and a guessed conversion would silently change what it sees.
- Lens distortion is removed, not refused: `Rectifier` undistorts plumb_bob,
  rational_polynomial and equidistant images with OpenCV to the camera's own K (maps cached
  per CameraInfo); other models are refused. Images already rectified (``image_rect``) use
  P's 3x3 and skip undistortion (``image_is_rectified``).
"""

from __future__ import annotations

import array
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from ace_ros.core import geometry
from builtin_interfaces.msg import Time as TimeMsg
import cv2
from geometry_msgs.msg import (Pose, PoseStamped, PoseWithCovarianceStamped, Transform,
                               TransformStamped)
from nav_msgs.msg import Odometry
import numpy as np
import numpy.typing as npt
from sensor_msgs.msg import CameraInfo, Image

FloatArray = npt.NDArray[np.float64]

#: Encodings `image_to_rgb` accepts.
SUPPORTED_ENCODINGS = ('rgb8', 'bgr8', 'mono8')
#: tf2's rule (QUATERNION_NORMALIZATION_TOLERANCE): |q|^2 may differ from 1 by this much.
QUATERNION_TOLERANCE = 1e-2
_NS = 1_000_000_000


class UnsupportedImageError(ValueError):
    """An Image message that cannot be turned into an (H, W, 3) uint8 RGB array."""


# --- time -------------------------------------------------------------------------------

def stamp_to_ns(stamp: TimeMsg) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * _NS + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> TimeMsg:
    """Integer nanoseconds (>= 0) -> builtin_interfaces/Time."""
    if ns < 0:
        raise ValueError(f'a ROS stamp cannot be negative, got {ns} ns')
    return TimeMsg(sec=int(ns // _NS), nanosec=int(ns % _NS))


def stamp_to_sec(stamp: TimeMsg) -> float:
    """builtin_interfaces/Time -> float seconds (for logs and Frame.stamp)."""
    return stamp_to_ns(stamp) / 1e9


# --- images -----------------------------------------------------------------------------

def image_to_rgb(msg: Image) -> npt.NDArray[np.uint8]:
    """sensor_msgs/Image (rgb8, bgr8 or mono8) -> (H, W, 3) uint8 RGB, a new array.

    Row padding (``step`` larger than width * channels) is dropped.

    Raises:
        UnsupportedImageError: for another encoding, or a size/step/data length mismatch.
    """
    encoding = msg.encoding.lower()
    if encoding not in SUPPORTED_ENCODINGS:
        raise UnsupportedImageError(
            f"image encoding '{msg.encoding}' is not supported; expected one of "
            f'{list(SUPPORTED_ENCODINGS)} (8-bit colour or grey; depth and 16-bit images '
            'cannot be localized)')
    channels = 1 if encoding == 'mono8' else 3
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise UnsupportedImageError(f'image is empty ({width} x {height})')
    if step < width * channels:
        raise UnsupportedImageError(
            f'image step {step} is smaller than width * channels = {width * channels} '
            f'({msg.encoding}, {width} x {height})')
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size < step * (height - 1) + width * channels:
        raise UnsupportedImageError(
            f'image data holds {data.size} bytes but {width} x {height} {msg.encoding} with '
            f'step {step} needs {step * height}')
    if data.size < step * height:  # some drivers omit the last row's padding
        data = np.concatenate([data, np.zeros(step * height - data.size, np.uint8)])
    rows = data[:step * height].reshape(height, step)[:, :width * channels]
    if encoding == 'mono8':
        return np.repeat(rows[:, :, None], 3, axis=2)
    pixels = rows.reshape(height, width, 3)
    return np.ascontiguousarray(pixels[:, :, ::-1] if encoding == 'bgr8' else pixels)


def rgb_to_image(rgb: npt.NDArray[np.uint8], stamp: TimeMsg, frame_id: str,
                 encoding: str = 'rgb8') -> Image:
    """(H, W, 3) uint8 RGB -> sensor_msgs/Image in `encoding` (rgb8, bgr8 or mono8)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f'expected (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}')
    if encoding == 'rgb8':
        pixels = rgb
    elif encoding == 'bgr8':
        pixels = rgb[:, :, ::-1]
    elif encoding == 'mono8':
        pixels = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    else:
        raise ValueError(f"encoding must be one of {list(SUPPORTED_ENCODINGS)}, got '{encoding}'")
    pixels = np.ascontiguousarray(pixels)
    msg = Image()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(rgb.shape[0]), int(rgb.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(pixels.strides[0])
    # array.array from bytes is a memcpy; assigning raw bytes would go element by element.
    msg.data = array.array('B', pixels.tobytes())
    return msg


# --- intrinsics and distortion ----------------------------------------------------------

def camera_info_to_K(msg: CameraInfo, image_is_rectified: bool = False) -> FloatArray:
    """CameraInfo -> (3, 3) K of the image it describes.

    Args:
        msg: the camera's CameraInfo.
        image_is_rectified: the image is already rectified (e.g. ``image_rect``): use the
            left 3x3 of P, as image_proc's output is described by P, not K.

    Raises:
        ValueError: for a zero/non-finite matrix, or binning / ROI (not supported).
    """
    if msg.binning_x > 1 or msg.binning_y > 1:
        raise ValueError(f'camera_info binning {msg.binning_x} x {msg.binning_y} is not '
                         'supported; expected 0 or 1 (publish the binned camera\'s own K)')
    roi = msg.roi
    if roi.width or roi.height:
        full = (roi.x_offset == 0 and roi.y_offset == 0 and roi.width == msg.width
                and roi.height == msg.height)
        if not full:
            raise ValueError(f'camera_info ROI {roi.width} x {roi.height} at ({roi.x_offset}, '
                             f'{roi.y_offset}) is not supported; expected the full image')
    if image_is_rectified:
        K = np.asarray(msg.p, dtype=np.float64).reshape(3, 4)[:, :3].copy()
        source = 'P'
    else:
        K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
        source = 'K'
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0 or K[2, 2] != 1.0:
        raise ValueError(f'camera_info {source} is not a calibrated pinhole matrix: '
                         f'{K.ravel().tolist()} (uncalibrated camera?)')
    return K


_DISTORTION_SIZES = {'plumb_bob': (4, 5, 8, 12, 14), 'rational_polynomial': (4, 5, 8, 12, 14),
                     'equidistant': (4,)}


@dataclass
class Rectifier:
    """Undistorts images of one camera to its own K; identity when there is no distortion.

    Build it with `Rectifier.from_camera_info`; `needs_update` tells when a new CameraInfo
    differs so the OpenCV maps must be rebuilt.
    """

    K: FloatArray
    width: int
    height: int
    key: tuple
    maps: Optional[Tuple[np.ndarray, np.ndarray]] = None

    @classmethod
    def from_camera_info(cls, msg: CameraInfo, image_is_rectified: bool = False) -> 'Rectifier':
        """Raises ValueError for an unsupported distortion model or bad calibration."""
        K = camera_info_to_K(msg, image_is_rectified)
        width, height = int(msg.width), int(msg.height)
        key = _info_key(msg, image_is_rectified)
        D = np.asarray(msg.d, dtype=np.float64)
        if image_is_rectified or D.size == 0 or not np.any(D):
            return cls(K, width, height, key)
        model = msg.distortion_model
        if model not in _DISTORTION_SIZES:
            raise ValueError(f"camera_info distortion model '{model}' with non-zero "
                             f'coefficients is not supported; expected one of '
                             f'{sorted(_DISTORTION_SIZES)} or zero distortion (or publish '
                             'rectified images and set image_is_rectified)')
        if D.size not in _DISTORTION_SIZES[model] or not np.all(np.isfinite(D)):
            raise ValueError(f"camera_info '{model}' needs {_DISTORTION_SIZES[model]} finite "
                             f'coefficients, got {D.tolist()}')
        if width == 0 or height == 0:
            raise ValueError(f'camera_info has distortion but no image size ({width} x {height})')
        if model == 'equidistant':
            maps = cv2.fisheye.initUndistortRectifyMap(K, D, np.eye(3), K, (width, height),
                                                       cv2.CV_16SC2)
        else:
            maps = cv2.initUndistortRectifyMap(K, D, np.eye(3), K, (width, height),
                                               cv2.CV_16SC2)
        return cls(K, width, height, key, maps)

    def needs_update(self, msg: CameraInfo, image_is_rectified: bool = False) -> bool:
        return _info_key(msg, image_is_rectified) != self.key

    def rectify(self, rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        """(H, W, 3) image of this camera -> the same, undistorted to `self.K`.

        Raises:
            ValueError: if the image size differs from the CameraInfo's.
        """
        height, width = rgb.shape[:2]
        if self.width and self.height and (width, height) != (self.width, self.height):
            raise ValueError(f'image is {width} x {height} but camera_info describes '
                             f'{self.width} x {self.height}')
        if self.maps is None:
            return rgb
        return cv2.remap(rgb, self.maps[0], self.maps[1], cv2.INTER_LINEAR)


def _info_key(msg: CameraInfo, image_is_rectified: bool) -> tuple:
    return (tuple(msg.k), tuple(msg.p), tuple(msg.d), msg.distortion_model, msg.width,
            msg.height, image_is_rectified)


# --- poses ------------------------------------------------------------------------------

def quaternion_from_msg(q) -> FloatArray:
    """geometry_msgs/Quaternion -> (4,) x, y, z, w, validated as tf2 does.

    Raises:
        ValueError: for non-finite values, an all-zero quaternion (an unset message), or a
            norm too far from 1 (|q|^2 - 1 beyond QUATERNION_TOLERANCE).
    """
    quat = np.array([q.x, q.y, q.z, q.w], dtype=np.float64)
    if not np.all(np.isfinite(quat)):
        raise ValueError(f'quaternion has non-finite values: {quat.tolist()}')
    norm2 = float(quat @ quat)
    if norm2 == 0.0:
        raise ValueError('quaternion is all zeros (an unset orientation?); identity is '
                         '(x, y, z, w) = (0, 0, 0, 1)')
    if abs(norm2 - 1.0) > QUATERNION_TOLERANCE:
        raise ValueError(f'quaternion {quat.tolist()} is not normalised (norm '
                         f'{np.sqrt(norm2):.4f}, expected 1)')
    return quat / np.sqrt(norm2)


def _xyz(v) -> FloatArray:
    xyz = np.array([v.x, v.y, v.z], dtype=np.float64)
    if not np.all(np.isfinite(xyz)):
        raise ValueError(f'translation has non-finite values: {xyz.tolist()}')
    return xyz


def pose_to_matrix(pose: Pose) -> FloatArray:
    """geometry_msgs/Pose -> (4, 4) `parent_from_child` (parent = the header frame)."""
    return geometry.pose_from_translation_quaternion(_xyz(pose.position),
                                                     quaternion_from_msg(pose.orientation))


def transform_to_matrix(transform: Transform) -> FloatArray:
    """geometry_msgs/Transform -> (4, 4) `parent_from_child`."""
    return geometry.pose_from_translation_quaternion(_xyz(transform.translation),
                                                     quaternion_from_msg(transform.rotation))


def _check_pose(pose: FloatArray, name: str) -> FloatArray:
    pose = np.asarray(pose, dtype=np.float64)
    geometry.check_shape(pose, (4, 4), name)
    if not np.all(np.isfinite(pose)):
        raise ValueError(f'{name} has non-finite values')
    return pose


def matrix_to_pose(parent_from_child: FloatArray) -> Pose:
    """(4, 4) `parent_from_child` -> geometry_msgs/Pose."""
    t, q = geometry.pose_to_translation_quaternion(_check_pose(parent_from_child, 'pose'))
    msg = Pose()
    msg.position.x, msg.position.y, msg.position.z = (float(v) for v in t)
    (msg.orientation.x, msg.orientation.y, msg.orientation.z,
     msg.orientation.w) = (float(v) for v in q)
    return msg


def matrix_to_transform(parent_from_child: FloatArray) -> Transform:
    """(4, 4) `parent_from_child` -> geometry_msgs/Transform."""
    t, q = geometry.pose_to_translation_quaternion(_check_pose(parent_from_child, 'transform'))
    msg = Transform()
    msg.translation.x, msg.translation.y, msg.translation.z = (float(v) for v in t)
    msg.rotation.x, msg.rotation.y, msg.rotation.z, msg.rotation.w = (float(v) for v in q)
    return msg


def to_pose_stamped(frame_from_child: FloatArray, stamp: TimeMsg, frame_id: str) -> PoseStamped:
    """(4, 4) pose of a body in `frame_id` -> PoseStamped."""
    msg = PoseStamped()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.pose = matrix_to_pose(frame_from_child)
    return msg


def to_pose_with_covariance(frame_from_child: FloatArray, covariance: FloatArray,
                            stamp: TimeMsg, frame_id: str) -> PoseWithCovarianceStamped:
    """(4, 4) pose + (6, 6) covariance (x, y, z, rot x, rot y, rot z) -> message."""
    covariance = np.asarray(covariance, dtype=np.float64)
    geometry.check_shape(covariance, (6, 6), 'covariance')
    msg = PoseWithCovarianceStamped()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.pose.pose = matrix_to_pose(frame_from_child)
    msg.pose.covariance = [float(v) for v in covariance.ravel()]
    return msg


def to_transform_stamped(parent_from_child: FloatArray, stamp: TimeMsg, parent_frame: str,
                         child_frame: str) -> TransformStamped:
    """(4, 4) `parent_from_child` -> TransformStamped (header = parent, child_frame_id)."""
    if not parent_frame or not child_frame or parent_frame == child_frame:
        raise ValueError(f'a transform needs two different, non-empty frames, got '
                         f"'{parent_frame}' -> '{child_frame}'")
    msg = TransformStamped()
    msg.header.stamp = stamp
    msg.header.frame_id = parent_frame
    msg.child_frame_id = child_frame
    msg.transform = matrix_to_transform(parent_from_child)
    return msg


def to_odometry(frame_from_child: FloatArray, stamp: TimeMsg, frame_id: str, child_frame: str,
                covariance: Optional[FloatArray] = None) -> Odometry:
    """(4, 4) pose of `child_frame` in `frame_id` -> Odometry (twist left zero)."""
    msg = Odometry()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.child_frame_id = child_frame
    msg.pose.pose = matrix_to_pose(frame_from_child)
    if covariance is not None:
        covariance = np.asarray(covariance, dtype=np.float64)
        geometry.check_shape(covariance, (6, 6), 'covariance')
        msg.pose.covariance = [float(v) for v in covariance.ravel()]
    return msg


def pose_stamped_to_matrix(msg: PoseStamped) -> FloatArray:
    """PoseStamped -> (4, 4) `header_frame_from_body`."""
    return pose_to_matrix(msg.pose)


def odometry_to_matrix(msg: Odometry) -> FloatArray:
    """Odometry -> (4, 4) `header_frame_from_child_frame`."""
    return pose_to_matrix(msg.pose.pose)


def transform_stamped_to_matrix(msg: TransformStamped) -> FloatArray:
    """TransformStamped -> (4, 4) `header_frame_from_child_frame`."""
    return transform_to_matrix(msg.transform)


# --- covariance -------------------------------------------------------------------------

#: Variance reported when a pose carries no information (unit: m^2 or rad^2).
MAX_VARIANCE = 1e6


def covariance_from_confidence(confidence: float, position_sigma_m: float = 0.05,
                               rotation_sigma_rad: float = 0.035,
                               max_variance: float = MAX_VARIANCE) -> FloatArray:
    """(6, 6) diagonal covariance of a RANSAC pose from its confidence in [0, 1].

    Standard deviations are the given sigmas (those of a fully confident pose) divided by the
    confidence, so variances grow as 1 / confidence^2: ~6x at confidence 0.4, capped at
    `max_variance` (a pose with confidence 0 says nothing). The order is ROS's: x, y, z, then
    rotation about x, y, z.
    """
    if not np.isfinite(confidence):
        raise ValueError(f'confidence must be finite, got {confidence}')
    c = float(np.clip(confidence, 0.0, 1.0))
    if c == 0.0:
        return np.eye(6) * max_variance
    sigmas = np.array([position_sigma_m] * 3 + [rotation_sigma_rad] * 3) / c
    return np.diag(np.minimum(sigmas ** 2, max_variance))


def offset_pose_covariance(covariance: FloatArray, parent_from_a: FloatArray,
                           a_from_b: FloatArray) -> FloatArray:
    """(6, 6) covariance of `parent_from_b = parent_from_a @ a_from_b`, `a_from_b` exact.

    ROS's convention for PoseWithCovariance: position errors in the parent (header) frame's
    axes, rotation errors about the parent's fixed axes, so a rotation error of the pose is
    the same for a and b, and a position error of b is a's plus the rotation error turning
    the lever arm r = p_b - p_a (parent axes): J = [[I, -[r]x], [0, I]], result J C J^T.
    (A's own rotation does not appear: in fixed axes it only matters through r.) With
    a = camera and b = base: the base pose's covariance from the camera pose's.
    """
    covariance = np.asarray(covariance, dtype=np.float64)
    geometry.check_shape(covariance, (6, 6), 'covariance')
    parent_from_a = _check_pose(parent_from_a, 'parent_from_a')
    parent_from_b = parent_from_a @ _check_pose(a_from_b, 'a_from_b')
    r = parent_from_b[:3, 3] - parent_from_a[:3, 3]
    jacobian = np.eye(6)
    jacobian[:3, 3:] = -np.array([[0.0, -r[2], r[1]], [r[2], 0.0, -r[0]], [-r[1], r[0], 0.0]])
    result = jacobian @ covariance @ jacobian.T
    return (result + result.T) / 2  # exactly symmetric


def covariance_diagonal(msg_covariance: Sequence[float]) -> FloatArray:
    """Row-major 36-element covariance -> its (6,) diagonal."""
    return np.asarray(msg_covariance, dtype=np.float64).reshape(6, 6).diagonal().copy()
