"""ROS messages -> numpy: images, intrinsics with their undistorter, poses, stamps.

The one decoder of message contents, for rclpy messages (the nodes) and `rosbags` messages
(the bag reader) alike. It imports no ROS package: fields are read by name (duck typing), so
anything with a message's fields works, including ROS 1 bags' CameraInfo with capitalised
arrays (K, D, P). Building messages to publish stays in `ace_ros.ros.conversions` (that needs
rclpy's classes); the pose and quaternion math, and the one rigid-pose and quaternion check,
are `ace_ros.core.geometry`'s.

Decisions:
- Images are decoded with numpy and OpenCV's cvtColor, not cv_bridge: ROS 2's cv_bridge is not
  on PyPI (the PyPI ``cv-bridge`` is a ROS 1 shim that breaks with numpy 2). Raw
  sensor_msgs/Image encodings accepted: rgb8, bgr8, mono8, rgba8, bgra8 (alpha dropped),
  yuv422 / uyvy (UYVY: ROS's 'yuv422' is UYVY) and yuv422_yuy2 / yuyv (YUYV). Refused, with a
  message naming the encoding: 16-bit and float images (mono16, 16UC1, 32FC1: depth, not
  intensities), Bayer mosaics (debayer first, e.g. image_proc) and anything else, since the
  encoder needs 8-bit colour and a guessed conversion would silently change what it sees.
- sensor_msgs/CompressedImage (image_transport's 'compressed': format 'jpeg', 'png' or
  'rgb8; jpeg compressed bgr8') is decoded with cv2.imdecode; compressedDepth, 16-bit payloads
  and formats that declare a refused original encoding are refused the same way.
- Lens distortion is removed, not refused: `Rectifier` undistorts plumb_bob,
  rational_polynomial and equidistant images with OpenCV to the camera's own K (maps cached
  per CameraInfo); other models are refused. Images already rectified (``image_rect``) use
  P's 3x3 and skip undistortion (``image_is_rectified``).
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import cv2
import numpy as np
import numpy.typing as npt

from ace_ros.core import geometry
from ace_ros.data.base import Undistorter

FloatArray = npt.NDArray[np.float64]
ByteArray = npt.NDArray[np.uint8]

NS_PER_S = 1_000_000_000

#: Raw encodings accepted: bytes per pixel and the cv2.cvtColor code to RGB (None: as is).
_DECODE = {
    'rgb8': (3, None),
    'bgr8': (3, cv2.COLOR_BGR2RGB),
    'mono8': (1, cv2.COLOR_GRAY2RGB),
    'rgba8': (4, cv2.COLOR_RGBA2RGB),
    'bgra8': (4, cv2.COLOR_BGRA2RGB),
    'yuv422': (2, cv2.COLOR_YUV2RGB_UYVY),
    'uyvy': (2, cv2.COLOR_YUV2RGB_UYVY),
    'yuv422_yuy2': (2, cv2.COLOR_YUV2RGB_YUYV),
    'yuyv': (2, cv2.COLOR_YUV2RGB_YUYV),
}
#: The inverse conversions, for building test and export messages (`encode_rgb`).
_ENCODE = {
    'rgb8': None, 'bgr8': cv2.COLOR_RGB2BGR, 'mono8': cv2.COLOR_RGB2GRAY,
    'rgba8': cv2.COLOR_RGB2RGBA, 'bgra8': cv2.COLOR_RGB2BGRA,
    'yuv422': cv2.COLOR_RGB2YUV_UYVY, 'uyvy': cv2.COLOR_RGB2YUV_UYVY,
    'yuv422_yuy2': cv2.COLOR_RGB2YUV_YUYV, 'yuyv': cv2.COLOR_RGB2YUV_YUYV,
}
#: Raw sensor_msgs/Image encodings `image_to_rgb` accepts (compared in lower case).
SUPPORTED_ENCODINGS = tuple(_DECODE)
#: Distortion models `Rectifier` removes, with the coefficient counts OpenCV takes for each.
#: A model '' with coefficients is read as plumb_bob (some ROS 1 drivers leave it empty).
DISTORTION_MODELS = {'plumb_bob': (4, 5, 8, 12, 14), 'rational_polynomial': (4, 5, 8, 12, 14),
                     'equidistant': (4,)}


class UnsupportedImageError(ValueError):
    """An image message that cannot be turned into an (H, W, 3) uint8 RGB array."""


# --- time -------------------------------------------------------------------------------

def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (anything with sec and nanosec) -> integer nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def header_stamp_ns(msg: Any) -> int:
    """A stamped message's header.stamp -> integer nanoseconds."""
    return stamp_to_ns(msg.header.stamp)


def ns_to_sec_nanosec(ns: int) -> tuple[int, int]:
    """Integer nanoseconds -> (sec, nanosec) of a builtin_interfaces/Time, nanosec in [0, 1e9)."""
    return int(ns // NS_PER_S), int(ns % NS_PER_S)


# --- images -----------------------------------------------------------------------------

def _refusal_reason(encoding: str) -> Optional[str]:
    """Why an encoding (lower case) that names a known kind of non-colour image is refused."""
    if encoding.startswith('bayer'):
        return 'a Bayer mosaic: debayer it first, e.g. with image_proc, and send image_color'
    if any(bits in encoding for bits in ('16', '32', '64')):
        return ('16-bit or floating-point pixels (a depth image?): the encoder needs 8-bit '
                'colour or grey')
    return None


def check_encoding(encoding: str) -> str:
    """A raw Image encoding -> its lower-case name, if `image_to_rgb` accepts it.

    Raises:
        UnsupportedImageError: naming the encoding, what is accepted and, for depth, 16-bit
            and Bayer images, why they are refused.
    """
    name = str(encoding).lower()
    if name in _DECODE:
        return name
    reason = _refusal_reason(name) or '8-bit colour or grey images only'
    raise UnsupportedImageError(f"image encoding '{encoding}' is not supported; expected one "
                                f'of {list(SUPPORTED_ENCODINGS)} ({reason})')


def _as_bytes(data: Any) -> ByteArray:
    """A message's uint8[] data (array.array, bytes, numpy array or list) as a 1-D view."""
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError):  # a list, or a buffer of wider items
        return np.asarray(data, dtype=np.uint8).reshape(-1)


def image_to_rgb(msg: Any) -> ByteArray:
    """sensor_msgs/Image -> (H, W, 3) uint8 RGB, a new array.

    Row padding (``step`` larger than width * bytes per pixel) is dropped; a last row without
    its padding is accepted (some drivers send it that way).

    Raises:
        UnsupportedImageError: for an encoding not in SUPPORTED_ENCODINGS, or a size, step or
            data length mismatch.
    """
    encoding = check_encoding(msg.encoding)
    channels, code = _DECODE[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise UnsupportedImageError(f'image is empty ({width} x {height})')
    if channels == 2 and width % 2:
        raise UnsupportedImageError(f'{msg.encoding} packs 2 pixels in 4 bytes, so the width '
                                    f'must be even, got {width} x {height}')
    if step < width * channels:
        raise UnsupportedImageError(
            f'image step {step} is smaller than width * channels = {width * channels} '
            f'({msg.encoding}, {width} x {height})')
    data = _as_bytes(msg.data)
    if data.size < step * (height - 1) + width * channels:
        raise UnsupportedImageError(
            f'image data holds {data.size} bytes but {width} x {height} {msg.encoding} with '
            f'step {step} needs {step * height}')
    if data.size < step * height:
        data = np.concatenate([data, np.zeros(step * height - data.size, np.uint8)])
    pixels = data[:step * height].reshape(height, step)[:, :width * channels]
    pixels = pixels.reshape(height, width, channels)
    if code is None:
        return pixels.copy()  # the message buffer may be read-only and is shared
    return cv2.cvtColor(pixels, code)


def check_compressed_format(image_format: str) -> None:
    """Refuse a CompressedImage format that cannot hold a colour image for the encoder.

    Raises:
        UnsupportedImageError: for compressedDepth, or a format declaring a 16-bit, float or
            Bayer original encoding (e.g. 'mono16; png compressed mono16').
    """
    if 'compresseddepth' in image_format.lower():
        raise UnsupportedImageError(f"CompressedImage format '{image_format}' is a compressed "
                                    'depth image (compressedDepth), not a colour image')
    original = image_format.split(';')[0].strip().lower() if ';' in image_format else ''
    reason = _refusal_reason(original) if original else None
    if reason:
        raise UnsupportedImageError(f"CompressedImage format '{image_format}': the original "
                                    f"encoding '{original}' is not supported ({reason})")


def compressed_image_to_rgb(msg: Any) -> ByteArray:
    """sensor_msgs/CompressedImage (jpeg, png, ...: what OpenCV decodes) -> (H, W, 3) uint8 RGB.

    Raises:
        UnsupportedImageError: for a format `check_compressed_format` refuses, or a payload
            of 16-bit pixels.
        ValueError: for an empty or undecodable payload.
    """
    image_format = str(msg.format)
    check_compressed_format(image_format)
    data = _as_bytes(msg.data)
    if data.size == 0:
        raise ValueError(f"CompressedImage (format '{image_format}') has no data")
    try:
        # ANYDEPTH keeps a 16-bit png 16-bit, so it is refused instead of scaled to 8 bits.
        image = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    except cv2.error:
        image = None
    if image is None:
        raise ValueError(f"cannot decode CompressedImage (format '{image_format}', "
                         f'{data.size} bytes): not an image OpenCV can read (jpeg, png, ...)')
    if image.dtype != np.uint8:
        raise UnsupportedImageError(f"CompressedImage (format '{image_format}') holds "
                                    f'{image.dtype} pixels; expected 8-bit colour or grey')
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def is_compressed(msg: Any) -> bool:
    """Whether `msg` is a CompressedImage (format + data) rather than a raw Image."""
    return hasattr(msg, 'format') and not hasattr(msg, 'encoding')


def decode_image(msg: Any) -> ByteArray:
    """sensor_msgs/Image or sensor_msgs/CompressedImage -> (H, W, 3) uint8 RGB, a new array.

    Raises:
        UnsupportedImageError: for what `image_to_rgb` or `compressed_image_to_rgb` refuses.
        ValueError: for a compressed payload that cannot be decoded.
    """
    return compressed_image_to_rgb(msg) if is_compressed(msg) else image_to_rgb(msg)


def encode_rgb(rgb: ByteArray, encoding: str = 'rgb8') -> ByteArray:
    """(H, W, 3) uint8 RGB -> (H, W * bytes per pixel) uint8 rows in a raw `encoding`.

    The inverse of `image_to_rgb` (without row padding: step = the row length). mono8 keeps
    the luma only; the yuv422 family subsamples colour 2:1 horizontally (BT.601, limited
    range, as OpenCV converts).

    Raises:
        ValueError: for another array shape or type, an encoding not in SUPPORTED_ENCODINGS,
            or an odd width for the yuv422 family.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f'expected (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}')
    name = str(encoding).lower()
    if name not in _ENCODE:
        raise ValueError(f"encoding must be one of {list(SUPPORTED_ENCODINGS)}, got '{encoding}'")
    if _DECODE[name][0] == 2 and rgb.shape[1] % 2:
        raise ValueError(f'{encoding} needs an even width, got {rgb.shape[1]}')
    code = _ENCODE[name]
    pixels = np.ascontiguousarray(rgb if code is None else cv2.cvtColor(
        np.ascontiguousarray(rgb), code))
    return pixels.reshape(rgb.shape[0], -1)


# --- intrinsics and distortion ----------------------------------------------------------

def _array(msg: Any, name: str) -> FloatArray:
    """A CameraInfo array by its ROS 2 name (k, d, p), or its ROS 1 name (K, D, P)."""
    value = getattr(msg, name, None)
    if value is None:
        value = getattr(msg, name.upper())
    return np.asarray(value, dtype=np.float64).reshape(-1)


def camera_info_to_K(msg: Any, image_is_rectified: bool = False) -> FloatArray:
    """sensor_msgs/CameraInfo -> (3, 3) K of the image it describes.

    Args:
        msg: the camera's CameraInfo.
        image_is_rectified: the image is already rectified (e.g. ``image_rect``): use the
            left 3x3 of P, as image_proc's output is described by P, not K.

    Raises:
        ValueError: for a zero/non-finite matrix, or binning / ROI (not supported).
    """
    binning_x, binning_y = int(getattr(msg, 'binning_x', 0)), int(getattr(msg, 'binning_y', 0))
    if binning_x > 1 or binning_y > 1:
        raise ValueError(f'camera_info binning {binning_x} x {binning_y} is not '
                         'supported; expected 0 or 1 (publish the binned camera\'s own K)')
    roi = getattr(msg, 'roi', None)
    if roi is not None and (roi.width or roi.height):
        full = (roi.x_offset == 0 and roi.y_offset == 0 and roi.width == msg.width
                and roi.height == msg.height)
        if not full:
            raise ValueError(f'camera_info ROI {roi.width} x {roi.height} at ({roi.x_offset}, '
                             f'{roi.y_offset}) is not supported; expected the full image')
    if image_is_rectified:
        K = _array(msg, 'p').reshape(3, 4)[:, :3].copy()
        source = 'P'
    else:
        K = _array(msg, 'k').reshape(3, 3)
        source = 'K'
    if (not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0
            or not np.allclose(K[2], [0.0, 0.0, 1.0])):
        raise ValueError(f'camera_info {source} is not a calibrated pinhole matrix: '
                         f'{K.ravel().tolist()} (uncalibrated camera?)')
    return K


def camera_info_key(msg: Any, image_is_rectified: bool = False) -> Tuple[Any, ...]:
    """What a `Rectifier` depends on: equal keys give the same K and undistortion."""
    roi = getattr(msg, 'roi', None)
    roi_key = () if roi is None else (roi.x_offset, roi.y_offset, roi.width, roi.height)
    common = (int(msg.width), int(msg.height), int(getattr(msg, 'binning_x', 0)),
              int(getattr(msg, 'binning_y', 0)), roi_key, image_is_rectified)
    if image_is_rectified:
        return (tuple(_array(msg, 'p')),) + common
    return (tuple(_array(msg, 'k')), tuple(_array(msg, 'd')), str(msg.distortion_model)) + common


class Rectifier:
    """Undistorts images of one camera to its own K; identity when there is no distortion.

    Build it with `Rectifier.from_camera_info`; `needs_update` tells when a new CameraInfo
    differs so that a new one must be built.

    Attributes:
        K: (3, 3) intrinsics of the rectified images.
        width, height: the image size the CameraInfo describes (0: not given, not checked).
        key: `camera_info_key` of the CameraInfo it was built from.
        undistorter: None when images are used as they are.
    """

    def __init__(self, K: FloatArray, width: int, height: int, key: tuple,
                 undistorter: Optional[Undistorter] = None) -> None:
        self.K = K
        self.width, self.height = int(width), int(height)
        self.key = key
        self.undistorter = undistorter

    @classmethod
    def from_camera_info(cls, msg: Any, image_is_rectified: bool = False) -> Rectifier:
        """Raises ValueError for an unsupported distortion model or bad calibration."""
        K = camera_info_to_K(msg, image_is_rectified)
        width, height = int(msg.width), int(msg.height)
        key = camera_info_key(msg, image_is_rectified)
        D = _array(msg, 'd')
        if image_is_rectified or D.size == 0 or not np.any(D):
            return cls(K, width, height, key)
        model = str(msg.distortion_model)
        sizes = DISTORTION_MODELS.get(model or 'plumb_bob')
        if sizes is None:
            raise ValueError(f"camera_info distortion model '{model}' with non-zero "
                             f'coefficients is not supported; expected one of '
                             f'{sorted(DISTORTION_MODELS)} or zero distortion (or publish '
                             'rectified images and set image_is_rectified)')
        if D.size not in sizes or not np.all(np.isfinite(D)):
            raise ValueError(f"camera_info '{model}' needs {sizes} finite coefficients, got "
                             f'{D.tolist()}')
        undistorter = Undistorter(K, D, fisheye=model == 'equidistant')
        if width and height:  # maps built now, so that a bad calibration fails here
            undistorter.maps(width, height)
        return cls(K, width, height, key, undistorter)

    @property
    def maps(self) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """The OpenCV remap maps at the CameraInfo's size; None when nothing is undistorted."""
        if self.undistorter is None or not (self.width and self.height):
            return None
        return self.undistorter.maps(self.width, self.height)

    def needs_update(self, msg: Any, image_is_rectified: bool = False) -> bool:
        """Whether CameraInfo `msg` describes another calibration than this one's."""
        return camera_info_key(msg, image_is_rectified) != self.key

    def rectify(self, rgb: ByteArray) -> ByteArray:
        """(H, W, 3) image of this camera -> the same, undistorted to `self.K`.

        Raises:
            ValueError: if the image size differs from the CameraInfo's.
        """
        height, width = rgb.shape[:2]
        if self.width and self.height and (width, height) != (self.width, self.height):
            raise ValueError(f'image is {width} x {height} but camera_info describes '
                             f'{self.width} x {self.height}')
        if self.undistorter is None:
            return rgb
        return self.undistorter(rgb)


# --- poses ------------------------------------------------------------------------------

def quaternion_from_msg(q: Any) -> FloatArray:
    """geometry_msgs/Quaternion -> (4,) x, y, z, w, validated as tf2 does and normalised.

    Raises:
        ValueError: see `geometry.check_quaternion`.
    """
    return geometry.check_quaternion([q.x, q.y, q.z, q.w])


def vector_from_msg(v: Any, name: str = 'translation') -> FloatArray:
    """geometry_msgs/Point or Vector3 -> (3,) float64.

    Raises:
        ValueError: for non-finite values.
    """
    xyz = np.array([v.x, v.y, v.z], dtype=np.float64)
    if not np.all(np.isfinite(xyz)):
        raise ValueError(f'{name} has non-finite values: {xyz.tolist()}')
    return xyz


def pose_to_matrix(pose: Any) -> FloatArray:
    """geometry_msgs/Pose -> (4, 4) `parent_from_child` (parent = the header frame)."""
    return geometry.pose_from_translation_quaternion(vector_from_msg(pose.position),
                                                     quaternion_from_msg(pose.orientation))


def transform_to_matrix(transform: Any) -> FloatArray:
    """geometry_msgs/Transform -> (4, 4) `parent_from_child`."""
    return geometry.pose_from_translation_quaternion(vector_from_msg(transform.translation),
                                                     quaternion_from_msg(transform.rotation))


def pose_stamped_to_matrix(msg: Any) -> FloatArray:
    """PoseStamped or PoseWithCovarianceStamped -> (4, 4) `header_frame_from_body`."""
    pose = msg.pose
    return pose_to_matrix(getattr(pose, 'pose', pose))  # PoseWithCovariance wraps the Pose


def odometry_to_matrix(msg: Any) -> FloatArray:
    """nav_msgs/Odometry -> (4, 4) `header_frame_from_child_frame`."""
    return pose_to_matrix(msg.pose.pose)


def transform_stamped_to_matrix(msg: Any) -> FloatArray:
    """TransformStamped -> (4, 4) `header_frame_from_child_frame`."""
    return transform_to_matrix(msg.transform)
