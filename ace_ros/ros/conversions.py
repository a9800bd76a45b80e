"""numpy -> ROS messages (images, poses, transforms, odometry, covariance) and stamps.

Decoding messages (images, CameraInfo, poses, stamps) is `ace_ros.data.messages`, which needs
no ROS and also serves the bag reader; its functions are re-exported here, so a node reads
and writes messages through this one module. What stays here needs rclpy's message classes:
building messages to publish, and builtin_interfaces/Time from nanoseconds. Pose and
quaternion math is `ace_ros.core.geometry` (quaternions are x, y, z, w there too).
"""

from __future__ import annotations

import array
from typing import Any, Optional, Sequence

from ace_ros.core import geometry
from ace_ros.data import messages
from ace_ros.data.point_cloud import point_cloud_fields
from ace_ros.data.messages import (  # noqa: F401 - re-exported: the nodes' decoding
    camera_info_to_K, decode_image, image_to_rgb, odometry_to_matrix, pose_stamped_to_matrix,
    pose_to_matrix, quaternion_from_msg, Rectifier, stamp_to_ns, SUPPORTED_ENCODINGS,
    transform_stamped_to_matrix, transform_to_matrix, UnsupportedImageError)
from builtin_interfaces.msg import Time as TimeMsg
from geometry_msgs.msg import (Pose, PoseStamped, PoseWithCovarianceStamped, Transform,
                               TransformStamped)
from nav_msgs.msg import Odometry
import numpy as np
import numpy.typing as npt
from sensor_msgs.msg import CompressedImage, Image, PointCloud2, PointField

FloatArray = npt.NDArray[np.float64]

#: Values of the nodes' image_transport parameter (image_transport's plugin names).
IMAGE_TRANSPORTS = ('raw', 'compressed')


# --- time -------------------------------------------------------------------------------

def ns_to_stamp(ns: int) -> TimeMsg:
    """Integer nanoseconds (>= 0) -> builtin_interfaces/Time."""
    if ns < 0:
        raise ValueError(f'a ROS stamp cannot be negative, got {ns} ns')
    sec, nanosec = messages.ns_to_sec_nanosec(ns)
    return TimeMsg(sec=sec, nanosec=nanosec)


def stamp_to_sec(stamp: TimeMsg) -> float:
    """builtin_interfaces/Time -> float seconds (for logs and Frame.stamp)."""
    return stamp_to_ns(stamp) / 1e9


# --- images -----------------------------------------------------------------------------

def rgb_to_image(rgb: npt.NDArray[np.uint8], stamp: TimeMsg, frame_id: str,
                 encoding: str = 'rgb8') -> Image:
    """(H, W, 3) uint8 RGB -> sensor_msgs/Image in `encoding` (one of SUPPORTED_ENCODINGS)."""
    rows = messages.encode_rgb(rgb, encoding)
    msg = Image()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(rgb.shape[0]), int(rgb.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(rows.strides[0])
    # array.array from bytes is a memcpy; assigning raw bytes would go element by element.
    msg.data = array.array('B', rows.tobytes())
    return msg


def image_subscription(node: Any, transport: str, base_topic: str = 'image') -> tuple[type, str]:
    """(message type, topic) of a node's image subscription, named as image_transport does.

    'raw': sensor_msgs/Image on `base_topic`; 'compressed': sensor_msgs/CompressedImage on
    the resolved (remapped) `base_topic` + '/compressed', as image_transport resolves it, so
    that remapping `image` moves its /compressed subtopic too.

    Raises:
        ValueError: for another transport.
    """
    if transport == 'raw':
        return Image, base_topic
    if transport == 'compressed':
        return CompressedImage, node.resolve_topic_name(base_topic).rstrip('/') + '/compressed'
    raise ValueError(f'parameter image_transport must be one of {list(IMAGE_TRANSPORTS)}, got '
                     f"'{transport}'")


# --- point clouds -----------------------------------------------------------------------

def to_point_cloud2(points: npt.ArrayLike, colors: Optional[npt.NDArray[np.uint8]],
                    stamp: TimeMsg, frame_id: str) -> PointCloud2:
    """(N, 3) points and optional (N, 3) uint8 RGB -> sensor_msgs/PointCloud2 (x, y, z[, rgb]
    float32; the layout is `ace_ros.data.point_cloud`'s)."""
    fields = point_cloud_fields(points, colors)
    msg = PointCloud2()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = fields.height, fields.width
    msg.fields = [PointField(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count)
                  for f in fields.fields]
    msg.is_bigendian, msg.is_dense = fields.is_bigendian, fields.is_dense
    msg.point_step, msg.row_step = fields.point_step, fields.row_step
    msg.data = array.array('B', fields.data)  # a memcpy, as for images
    return msg


# --- poses ------------------------------------------------------------------------------

def matrix_to_pose(parent_from_child: FloatArray) -> Pose:
    """(4, 4) `parent_from_child` -> geometry_msgs/Pose."""
    t, q = geometry.pose_to_translation_quaternion(
        geometry.check_rigid_pose(parent_from_child, 'pose'))
    msg = Pose()
    msg.position.x, msg.position.y, msg.position.z = (float(v) for v in t)
    (msg.orientation.x, msg.orientation.y, msg.orientation.z,
     msg.orientation.w) = (float(v) for v in q)
    return msg


def matrix_to_transform(parent_from_child: FloatArray) -> Transform:
    """(4, 4) `parent_from_child` -> geometry_msgs/Transform."""
    t, q = geometry.pose_to_translation_quaternion(
        geometry.check_rigid_pose(parent_from_child, 'transform'))
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
    parent_from_a = geometry.check_rigid_pose(parent_from_a, 'parent_from_a')
    parent_from_b = parent_from_a @ geometry.check_rigid_pose(a_from_b, 'a_from_b')
    r = parent_from_b[:3, 3] - parent_from_a[:3, 3]
    jacobian = np.eye(6)
    jacobian[:3, 3:] = -np.array([[0.0, -r[2], r[1]], [r[2], 0.0, -r[0]], [-r[1], r[0], 0.0]])
    result = jacobian @ covariance @ jacobian.T
    return (result + result.T) / 2  # exactly symmetric


def covariance_diagonal(msg_covariance: Sequence[float]) -> FloatArray:
    """Row-major 36-element covariance -> its (6,) diagonal."""
    return np.asarray(msg_covariance, dtype=np.float64).reshape(6, 6).diagonal().copy()
