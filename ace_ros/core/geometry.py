"""The only pose, quaternion and intrinsics math in ace_ros.

Conventions, stated once:
- Poses are 4x4 float64 matrices named `dst_from_src`; `world_from_cam` maps camera
  coordinates (OpenCV axes: x right, y down, z forward) to world coordinates, metres.
- Quaternions are (x, y, z, w), as in ROS, Hamilton convention, unit norm.
- Pixel coordinates are OpenCV's: the centre of the top-left pixel is (0, 0).
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

#: tf2's rule (QUATERNION_NORMALIZATION_TOLERANCE): |q|^2 of a quaternion read from a message
#: may differ from 1 by this much, and it is then normalised. Quaternions are compared on
#: |q|^2, so this is the ROS ecosystem's tolerance, not ours to tighten: what tf2 accepts
#: (e.g. a static_transform_publisher given 3 decimals) must be accepted here too.
QUATERNION_TOLERANCE = 1e-2
#: Largest |R^T R - I| entry, and largest deviation of the last row from (0, 0, 0, 1), of a
#: pose matrix `check_rigid_pose` accepts. 1e-4 passes float32 rotations (~1e-7) and text
#: rounded to 5 decimals (~3e-5); it refuses a matrix built from a quaternion of norm 1.00005
#: or more that was not normalised (|q| = 1.0001 gives 2e-4), i.e. a scale error no rounding
#: explains. For poses this package computes, matches from pose topics, or publishes.
RIGID_TOLERANCE = 1e-4
#: The same for pose files of datasets, which are what they are: 7-Scenes' own poses reach
#: |R^T R - I| = 1.5e-4 (stairs, seq-01-frame-000000), and a reader that refuses them fails a
#: user at the first command.
FILE_POSE_TOLERANCE = 1e-3


def check_shape(array: np.ndarray, shape: Tuple[int | None, ...], name: str) -> None:
    """Raise ValueError unless `array` has `shape` (None matches any size).

    >>> check_shape(np.zeros((3, 3)), (3, 3), 'K')
    """
    if array.ndim != len(shape) or any(
            want is not None and got != want for got, want in zip(array.shape, shape)):
        raise ValueError(f'{name} must have shape {shape}, got {array.shape}')


def check_quaternion(quat_xyzw: Sequence[float], name: str = 'quaternion') -> FloatArray:
    """(4,) x, y, z, w quaternion validated as tf2 does -> the same, normalised to unit length.

    Raises:
        ValueError: for non-finite values, an all-zero quaternion (an unset message), or a
            norm too far from 1 (|q|^2 - 1 beyond QUATERNION_TOLERANCE).

    >>> check_quaternion([0.0, 0.0, 0.0, 1.004]).tolist()
    [0.0, 0.0, 0.0, 1.0]
    """
    quat = np.asarray(quat_xyzw, dtype=np.float64).reshape(4)
    if not np.all(np.isfinite(quat)):
        raise ValueError(f'{name} has non-finite values: {quat.tolist()}')
    norm2 = float(quat @ quat)
    if norm2 == 0.0:
        raise ValueError(f'{name} is all zeros (an unset orientation?); identity is '
                         '(x, y, z, w) = (0, 0, 0, 1)')
    if abs(norm2 - 1.0) > QUATERNION_TOLERANCE:
        raise ValueError(f'{name} {quat.tolist()} is not normalised (norm '
                         f'{np.sqrt(norm2):.4f}, expected 1)')
    return quat / np.sqrt(norm2)


def check_rigid_pose(pose: npt.ArrayLike, name: str = 'pose',
                     tolerance: float = RIGID_TOLERANCE) -> FloatArray:
    """A (4, 4) rigid transform as float64, or ValueError saying what is wrong with it.

    The last row must be (0, 0, 0, 1) and the rotation block orthonormal with determinant
    +1, both within `tolerance` (RIGID_TOLERANCE; FILE_POSE_TOLERANCE for dataset files).

    Args:
        pose: the matrix to check.
        name: what to call it in the error, e.g. the file it came from.
        tolerance: largest |R^T R - I| entry and last-row deviation accepted.

    Raises:
        ValueError: for another shape, non-finite values, or a matrix that is not rigid.

    >>> check_rigid_pose(np.eye(4)).shape
    (4, 4)
    """
    pose = np.asarray(pose, dtype=np.float64)
    check_shape(pose, (4, 4), name)
    if not np.all(np.isfinite(pose)):
        raise ValueError(f'{name} has non-finite values: {pose.tolist()}')
    if np.max(np.abs(pose[3] - [0.0, 0.0, 0.0, 1.0])) > tolerance:
        raise ValueError(f'{name} last row must be [0, 0, 0, 1], got {pose[3].tolist()}')
    rotation = pose[:3, :3]
    error = float(np.max(np.abs(rotation.T @ rotation - np.eye(3))))
    det = float(np.linalg.det(rotation))
    if error > tolerance or det <= 0:
        raise ValueError(f'{name} rotation is not a rotation (|R^T R - I| = {error:.3g}, '
                         f'det {det:.4f}); expected orthonormal with det +1 and |R^T R - I| '
                         f'<= {tolerance:g}')
    return pose


def make_pose(rotation: FloatArray, translation: FloatArray) -> FloatArray:
    """Build a (4, 4) pose from a (3, 3) rotation and a (3,) translation."""
    pose = np.eye(4)
    pose[:3, :3] = rotation
    pose[:3, 3] = np.asarray(translation, dtype=np.float64).reshape(3)
    return pose


def invert_pose(pose: FloatArray) -> FloatArray:
    """Invert a rigid (4, 4) pose: `cam_from_world = invert_pose(world_from_cam)`.

    >>> bool(np.allclose(invert_pose(np.eye(4)), np.eye(4)))
    True
    """
    rotation = pose[:3, :3]
    return make_pose(rotation.T, -rotation.T @ pose[:3, 3])


def quaternion_to_matrix(quat_xyzw: Sequence[float]) -> FloatArray:
    """(x, y, z, w) quaternion -> (3, 3) rotation; the quaternion is normalised first.

    Raises:
        ValueError: for non-finite or near-zero quaternions.

    >>> bool(np.allclose(quaternion_to_matrix([0, 0, 0, 1]), np.eye(3)))
    True
    """
    q = np.asarray(quat_xyzw, dtype=np.float64).reshape(4)
    norm = np.linalg.norm(q)
    if not np.isfinite(norm) or norm < 1e-9:
        raise ValueError(f'quaternion must be finite and non-zero, got {q.tolist()}')
    x, y, z, w = q / norm
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def matrix_to_quaternion(rotation: FloatArray) -> FloatArray:
    """(3, 3) rotation -> (x, y, z, w) unit quaternion with w >= 0.

    >>> matrix_to_quaternion(np.eye(3)).tolist()
    [0.0, 0.0, 0.0, 1.0]
    """
    m = np.asarray(rotation, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    # Shepperd's method: branch on the largest diagonal term for numerical stability.
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, s / 4]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [s / 4, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 1] + m[1, 0]) / s, s / 4, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, s / 4, (m[1, 0] - m[0, 1]) / s]
    quat = np.array(q) / np.linalg.norm(q)
    return quat if quat[3] >= 0 else -quat


def pose_from_translation_quaternion(translation: Sequence[float],
                                     quat_xyzw: Sequence[float]) -> FloatArray:
    """(3,) translation + (x, y, z, w) quaternion -> (4, 4) pose."""
    t = np.asarray(translation, dtype=np.float64).reshape(3)
    if not np.all(np.isfinite(t)):
        raise ValueError(f'translation must be finite, got {t.tolist()}')
    return make_pose(quaternion_to_matrix(quat_xyzw), t)


def pose_to_translation_quaternion(pose: FloatArray) -> Tuple[FloatArray, FloatArray]:
    """(4, 4) pose -> ((3,) translation, (4,) x, y, z, w quaternion)."""
    return pose[:3, 3].copy(), matrix_to_quaternion(pose[:3, :3])


def rotation_angle_deg(rotation: FloatArray) -> float:
    """Angle in degrees of a (3, 3) rotation."""
    cos = np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0)
    return float(np.degrees(np.arccos(cos)))


def axis_angle_to_matrix(axis_angle: FloatArray) -> FloatArray:
    """Rodrigues: (3,) axis * angle (radians) -> (3, 3) rotation."""
    v = np.asarray(axis_angle, dtype=np.float64).reshape(3)
    angle = np.linalg.norm(v)
    if angle < 1e-12:
        return np.eye(3)
    k = v / angle
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


def pose_error(world_from_cam_est: FloatArray,
               world_from_cam_gt: FloatArray) -> Tuple[float, float]:
    """Translation error (m, between camera centres) and rotation error (deg).

    >>> pose_error(np.eye(4), np.eye(4))
    (0.0, 0.0)
    """
    t_err = float(np.linalg.norm(world_from_cam_est[:3, 3] - world_from_cam_gt[:3, 3]))
    r_err = rotation_angle_deg(world_from_cam_est[:3, :3].T @ world_from_cam_gt[:3, :3])
    return t_err, r_err


def slerp_pose(pose_a: FloatArray, pose_b: FloatArray, alpha: float) -> FloatArray:
    """Interpolate between two poses: linear in translation, slerp in rotation.

    alpha = 0 gives pose_a, alpha = 1 gives pose_b.
    """
    qa = matrix_to_quaternion(pose_a[:3, :3])
    qb = matrix_to_quaternion(pose_b[:3, :3])
    dot = float(np.dot(qa, qb))
    if dot < 0:  # take the short way round
        qb, dot = -qb, -dot
    if dot > 0.9995:
        q = qa + alpha * (qb - qa)
    else:
        theta = np.arccos(dot)
        q = (np.sin((1 - alpha) * theta) * qa + np.sin(alpha * theta) * qb) / np.sin(theta)
    t = (1 - alpha) * pose_a[:3, 3] + alpha * pose_b[:3, 3]
    return make_pose(quaternion_to_matrix(q), t)


def scale_intrinsics(K: FloatArray, scale_x: float, scale_y: float) -> FloatArray:
    """Intrinsics of an image resized by (scale_x, scale_y), pixel-centre convention.

    f' = f * s and c' = (c + 0.5) * s - 0.5, so pixel centres stay consistent.
    """
    check_shape(K, (3, 3), 'K')
    scaled = np.array(K, dtype=np.float64)
    scaled[0, 0] *= scale_x
    scaled[0, 1] *= scale_x
    scaled[1, 1] *= scale_y
    scaled[0, 2] = (K[0, 2] + 0.5) * scale_x - 0.5
    scaled[1, 2] = (K[1, 2] + 0.5) * scale_y - 0.5
    return scaled


def intrinsics_from_focal(focal: float, width: int, height: int) -> FloatArray:
    """(3, 3) K for one focal length with the principal point at the image centre."""
    return np.array([[focal, 0.0, (width - 1) / 2.0],
                     [0.0, focal, (height - 1) / 2.0],
                     [0.0, 0.0, 1.0]])


def project(points_cam: FloatArray, K: FloatArray) -> FloatArray:
    """(N, 3) camera-frame points -> (N, 2) pixels."""
    uvw = points_cam @ K.T
    return uvw[:, :2] / uvw[:, 2:3]


def transform_points(pose: FloatArray, points: FloatArray) -> FloatArray:
    """Apply a (4, 4) pose to (N, 3) points."""
    return points @ pose[:3, :3].T + pose[:3, 3]
