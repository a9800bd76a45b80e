"""numpy points -> the contents of a sensor_msgs/PointCloud2, without ROS.

The layout is the one RViz's PointCloud2 display reads by default: per point x, y, z as
float32 and, with colours, ``rgb``: one float32 whose four bytes are the uint32
``0x00RRGGBB`` (PCL's packed RGB; RViz's "RGB8" colour transformer unpacks it). Little-endian,
one row (``height`` 1), no NaN points (``is_dense``). `ace_ros.ros.conversions.to_point_cloud2`
puts these fields into a message; keeping them here lets them be tested without rclpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import numpy.typing as npt

#: sensor_msgs/PointField.FLOAT32
FLOAT32 = 7


@dataclass(frozen=True)
class PointFieldSpec:
    """One sensor_msgs/PointField: `datatype` is one of PointField's constants."""

    name: str
    offset: int
    datatype: int = FLOAT32
    count: int = 1


@dataclass(frozen=True)
class PointCloudFields:
    """Everything of a PointCloud2 but its header."""

    fields: Tuple[PointFieldSpec, ...]
    height: int
    width: int
    point_step: int
    row_step: int
    data: bytes
    is_bigendian: bool = False
    is_dense: bool = True


def pack_rgb(colors: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """(N, 3) uint8 RGB -> (N,) float32 whose bits are the uint32 0x00RRGGBB."""
    colors = np.asarray(colors)
    if colors.ndim != 2 or colors.shape[1] != 3 or colors.dtype != np.uint8:
        raise ValueError(f'colors must be (N, 3) uint8 RGB, got {colors.shape} {colors.dtype}')
    rgb = (colors[:, 0].astype(np.uint32) << 16) | (colors[:, 1].astype(np.uint32) << 8) \
        | colors[:, 2].astype(np.uint32)
    return rgb.view(np.float32)


def point_cloud_fields(points: npt.ArrayLike,
                       colors: Optional[npt.NDArray[np.uint8]] = None) -> PointCloudFields:
    """(N, 3) points and optional (N, 3) uint8 RGB -> PointCloud2 fields (x, y, z[, rgb]).

    Raises:
        ValueError: if the points are not (N, 3) finite, or the colours not one per point.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f'points must be (N, 3), got shape {points.shape}')
    if not np.all(np.isfinite(points)):
        raise ValueError('points must be finite (the cloud is published as dense)')
    specs = [PointFieldSpec('x', 0), PointFieldSpec('y', 4), PointFieldSpec('z', 8)]
    dtype = [('x', '<f4'), ('y', '<f4'), ('z', '<f4')]
    if colors is not None:
        if len(colors) != len(points):
            raise ValueError(f'got {len(colors)} colours for {len(points)} points')
        specs.append(PointFieldSpec('rgb', 12))
        dtype.append(('rgb', '<f4'))
    rows = np.empty(len(points), dtype=dtype)
    rows['x'], rows['y'], rows['z'] = points.T
    if colors is not None:
        rows['rgb'] = pack_rgb(colors)
    step = rows.dtype.itemsize
    return PointCloudFields(tuple(specs), height=1, width=len(points), point_step=step,
                            row_step=step * len(points), data=rows.tobytes())
