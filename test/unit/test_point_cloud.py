"""Tests for ace_ros.data.point_cloud: the PointCloud2 layout RViz reads, without ROS."""

from __future__ import annotations

from ace_ros.data.point_cloud import FLOAT32, pack_rgb, point_cloud_fields, PointFieldSpec
import numpy as np
import pytest


def test_xyz_rgb_layout_round_trips():
    points = np.array([[1.0, -2.0, 3.5], [0.25, 0.0, -7.0]])
    colors = np.array([[255, 0, 0], [1, 2, 3]], np.uint8)
    cloud = point_cloud_fields(points, colors)
    assert cloud.fields == (PointFieldSpec('x', 0), PointFieldSpec('y', 4),
                            PointFieldSpec('z', 8), PointFieldSpec('rgb', 12))
    assert all(f.datatype == FLOAT32 == 7 and f.count == 1 for f in cloud.fields)
    assert (cloud.height, cloud.width, cloud.point_step, cloud.row_step) == (1, 2, 16, 32)
    assert not cloud.is_bigendian and cloud.is_dense and len(cloud.data) == 32
    rows = np.frombuffer(cloud.data, dtype=[('x', '<f4'), ('y', '<f4'), ('z', '<f4'),
                                            ('rgb', '<u4')])
    np.testing.assert_array_equal(np.c_[rows['x'], rows['y'], rows['z']], points)
    # PCL's packed RGB, as RViz's RGB8 transformer unpacks it: 0x00RRGGBB, i.e. the bytes
    # B, G, R, 0 in little-endian order.
    assert rows['rgb'].tolist() == [0xFF0000, 0x010203]
    assert cloud.data[12:16] == bytes([0, 0, 255, 0])


def test_without_colours_only_xyz():
    cloud = point_cloud_fields(np.zeros((3, 3)))
    assert [f.name for f in cloud.fields] == ['x', 'y', 'z']
    assert cloud.point_step == 12 and len(cloud.data) == 36


def test_empty_cloud_is_a_valid_message():
    cloud = point_cloud_fields(np.zeros((0, 3)), np.zeros((0, 3), np.uint8))
    assert cloud.width == 0 and cloud.data == b''


def test_pack_rgb_bits():
    packed = pack_rgb(np.array([[0x12, 0x34, 0x56]], np.uint8))
    assert packed.dtype == np.float32 and packed.view(np.uint32)[0] == 0x123456


@pytest.mark.parametrize('points, colors, match', [
    (np.zeros((2, 2)), None, r'\(N, 3\)'),
    (np.array([[0.0, np.inf, 0.0]]), None, 'finite'),
    (np.zeros((2, 3)), np.zeros((1, 3), np.uint8), '1 colours for 2 points'),
    (np.zeros((1, 3)), np.zeros((1, 3), np.float32), 'uint8'),
])
def test_bad_input_is_refused(points, colors, match):
    with pytest.raises(ValueError, match=match):
        point_cloud_fields(points, colors)
