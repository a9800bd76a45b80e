"""COLMAP sparse-model reader on generated models, text and binary."""

from __future__ import annotations

from pathlib import Path
import struct

import cv2
import numpy as np
import pytest

from ace_ros.core.geometry import (axis_angle_to_matrix, invert_pose, make_pose,
                                   matrix_to_quaternion, project, transform_points)
from ace_ros.data.colmap import CAMERA_MODELS, ColmapSource
from ace_ros.data.sources import detect_format, open_source

WIDTH, HEIGHT = 96, 72
# Binary model ids, written here from COLMAP's documentation rather than read from the module.
MODEL_IDS = {'SIMPLE_PINHOLE': 0, 'PINHOLE': 1, 'SIMPLE_RADIAL': 2, 'RADIAL': 3, 'OPENCV': 4,
             'OPENCV_FISHEYE': 5, 'FULL_OPENCV': 6, 'FOV': 7, 'SIMPLE_RADIAL_FISHEYE': 8,
             'THIN_PRISM_FISHEYE': 10, 'FISHEYE': 15}


def _qt(cam_from_world: np.ndarray) -> list[float]:
    """COLMAP's QW QX QY QZ TX TY TZ of a cam_from_world pose."""
    qx, qy, qz, qw = matrix_to_quaternion(cam_from_world[:3, :3])
    return [qw, qx, qy, qz, *cam_from_world[:3, 3]]


def _write_text(folder: Path, cameras: list, images: list) -> None:
    """cameras: (id, model, w, h, params); images: (id, cam_from_world, camera_id, name)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ['# Camera list with one line of data per camera:',
             '#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]']
    lines += [' '.join([str(i), model, str(w), str(h), *(repr(float(p)) for p in params)])
              for i, model, w, h, params in cameras]
    (folder / 'cameras.txt').write_text('\n'.join(lines) + '\n')
    lines = ['# Image list with two lines of data per image:',
             '#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME',
             '#   POINTS2D[] as (X, Y, POINT3D_ID)']
    for n, (i, cam_from_world, camera_id, name) in enumerate(images):
        pose = ' '.join(repr(float(v)) for v in _qt(cam_from_world))
        lines += [f'{i} {pose} {camera_id} {name}',
                  '' if n % 2 else '10.5 20.25 -1 30.0 40.0 7']
    (folder / 'images.txt').write_text('\n'.join(lines) + '\n')


def _write_binary(folder: Path, cameras: list, images: list) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = struct.pack('<Q', len(cameras))
    for i, model, w, h, params in cameras:
        data += struct.pack(f'<IiQQ{len(params)}d', i, MODEL_IDS[model], w, h, *params)
    (folder / 'cameras.bin').write_bytes(data)
    data = struct.pack('<Q', len(images))
    for n, (i, cam_from_world, camera_id, name) in enumerate(images):
        data += struct.pack('<I7dI', i, *_qt(cam_from_world), camera_id)
        data += name.encode() + b'\0' + struct.pack('<Q', n)
        data += b''.join(struct.pack('<ddq', 1.5 * k, 2.5, -1) for k in range(n))
    (folder / 'images.bin').write_bytes(data)


def _write_images(root: Path, names: list[str], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for name in names:
        path = root / 'images' / name
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8))


def _model(seed: int = 1) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    cameras = [(3, 'PINHOLE', WIDTH, HEIGHT, [70.0, 71.5, 48.25, 35.75]),
               (1, 'SIMPLE_PINHOLE', WIDTH, HEIGHT, [65.0, 48.0, 36.0])]
    names = ['b.png', 'a.png', 'cam1/c.png']
    images = [(7 + i, make_pose(axis_angle_to_matrix(rng.normal(size=3)), rng.normal(size=3)),
               (3, 1, 3)[i], name) for i, name in enumerate(names)]
    return cameras, images


@pytest.mark.parametrize('layout', ['sparse/0', 'sparse', '.'])
def test_text_and_binary_give_the_same_frames(tmp_path: Path, layout: str) -> None:
    cameras, images = _model()
    sources = []
    for kind, writer in (('txt', _write_text), ('bin', _write_binary)):
        root = tmp_path / kind
        writer(root / layout, cameras, images)
        _write_images(root, [name for *_, name in images])
        assert detect_format(root) == 'colmap'
        sources.append(open_source(root))
    text, binary = sources
    assert isinstance(text, ColmapSource) and text.has_poses
    assert text.names == binary.names == ['a', 'b', 'cam1-c']  # NAME order, not id order
    by_name = {Path(name).with_suffix('').as_posix().replace('/', '-'): (pose, cam)
               for _, pose, cam, name in images}
    for frame_t, frame_b in zip(text, binary):
        np.testing.assert_array_equal(frame_t.world_from_cam, frame_b.world_from_cam)
        np.testing.assert_array_equal(frame_t.K, frame_b.K)
        np.testing.assert_array_equal(frame_t.image, frame_b.image)
        cam_from_world, camera_id = by_name[frame_t.name]
        np.testing.assert_allclose(frame_t.world_from_cam, invert_pose(cam_from_world),
                                   atol=1e-12)
        assert frame_t.K[0, 0] == (70.0 if camera_id == 3 else 65.0)
    np.testing.assert_array_equal(text[2].K, [[70.0, 0, 47.75], [0, 71.5, 35.25], [0, 0, 1]])


def test_pose_convention_against_a_known_camera_centre(tmp_path: Path) -> None:
    # qw = qy = sqrt(1/2): R rotates +90 deg about y, so the camera's z axis (its view
    # direction) is world -x. With t = -R C the camera centre is C = (1, 2, 3).
    model = tmp_path / 'sparse' / '0'
    model.mkdir(parents=True)
    (model / 'cameras.txt').write_text(f'1 SIMPLE_PINHOLE {WIDTH} {HEIGHT} 50 48 36\n')
    (model / 'images.txt').write_text(
        '1 0.7071067811865476 0 0.7071067811865476 0 -3 -2 1 1 a.png\n\n')
    _write_images(tmp_path, ['a.png'])
    frame = ColmapSource(tmp_path)[0]
    np.testing.assert_allclose(frame.world_from_cam[:3, 3], [1.0, 2.0, 3.0], atol=1e-12)
    np.testing.assert_allclose(frame.world_from_cam[:3, :3] @ [0, 0, 1], [-1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(frame.world_from_cam[:3, :3] @ [0, 1, 0], [0, 1, 0], atol=1e-12)
    # A point 2 m ahead projects to COLMAP's (48, 36): the image centre, which is OpenCV's
    # (47.5, 35.5); one 1 m to its world -z (the camera's -x) lands 25 px left.
    points = np.array([[-1.0, 2.0, 3.0], [-1.0, 2.0, 2.0]])
    pixels = project(transform_points(invert_pose(frame.world_from_cam), points), frame.K)
    np.testing.assert_allclose(pixels, [[47.5, 35.5], [22.5, 35.5]], atol=1e-9)


def _opencv_distort(x: float, y: float, k: list[float]) -> tuple[float, float]:
    """COLMAP OPENCV / FULL_OPENCV distortion of a normalised point; k = k1 k2 p1 p2 k3..k6."""
    k1, k2, p1, p2, k3, k4, k5, k6 = k + [0.0] * (8 - len(k))
    r2 = x * x + y * y
    radial = ((1 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3)
              / (1 + k4 * r2 + k5 * r2 ** 2 + k6 * r2 ** 3))
    return (x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
            y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y)


def _fisheye_distort(x: float, y: float, k: list[float]) -> tuple[float, float]:
    """COLMAP's fisheye models: equidistant, theta_d = theta (1 + k1 theta^2 + ...)."""
    r = np.hypot(x, y)
    theta = np.arctan(r)
    theta_d = theta * (1 + sum(c * theta ** (2 * (i + 1)) for i, c in enumerate(k)))
    return x * theta_d / r, y * theta_d / r


# (model, params, fx, fy, cx, cy, distortion of normalised points)
DISTORTED = [
    ('SIMPLE_RADIAL', [60, 48.5, 36.5, -0.3], 60, 60, 48.5, 36.5,
     lambda x, y: _opencv_distort(x, y, [-0.3])),
    ('OPENCV', [60, 62, 47, 37, -0.3, 0.05, 0.01, -0.008], 60, 62, 47, 37,
     lambda x, y: _opencv_distort(x, y, [-0.3, 0.05, 0.01, -0.008])),
    ('FULL_OPENCV', [60, 62, 47, 37, -0.2, 0.02, 0.004, 0.002, 0.01, 0.1, 0.01, 0.001],
     60, 62, 47, 37,
     lambda x, y: _opencv_distort(x, y, [-0.2, 0.02, 0.004, 0.002, 0.01, 0.1, 0.01, 0.001])),
    ('OPENCV_FISHEYE', [55, 56, 48, 36, 0.05, -0.02, 0.01, -0.002], 55, 56, 48, 36,
     lambda x, y: _fisheye_distort(x, y, [0.05, -0.02, 0.01, -0.002])),
    ('SIMPLE_RADIAL_FISHEYE', [55, 48, 36, 0.08], 55, 55, 48, 36,
     lambda x, y: _fisheye_distort(x, y, [0.08])),
    ('FISHEYE', [55, 56, 48, 36], 55, 56, 48, 36, lambda x, y: _fisheye_distort(x, y, [])),
]


@pytest.mark.parametrize('model, params, fx, fy, cx, cy, distort', DISTORTED,
                         ids=[d[0] for d in DISTORTED])
def test_distorted_models_are_undistorted(tmp_path: Path, model, params, fx, fy, cx, cy,
                                          distort) -> None:
    # A blob drawn where the lens puts the normalised point (0.6, -0.4) must end up where
    # a pinhole with the same fx, fy, cx, cy puts it; pixels in OpenCV's centre convention.
    x, y = 0.6, -0.4
    xd, yd = distort(x, y)
    raw_at = np.array([fx * xd + cx - 0.5, fy * yd + cy - 0.5])
    want = np.array([fx * x + cx - 0.5, fy * y + cy - 0.5])
    assert np.linalg.norm(raw_at - want) > 2.0  # the lens moves the point visibly
    u, v = np.meshgrid(np.arange(WIDTH), np.arange(HEIGHT))
    blob = 250 * np.exp(-((u - raw_at[0]) ** 2 + (v - raw_at[1]) ** 2) / (2 * 2.0 ** 2))
    image = np.repeat(blob[..., None], 3, axis=2).round().astype(np.uint8)
    (tmp_path / 'images').mkdir()
    assert cv2.imwrite(str(tmp_path / 'images' / 'a.png'), image)
    _write_text(tmp_path / 'sparse' / '0', [(1, model, WIDTH, HEIGHT, params)],
                [(1, np.eye(4), 1, 'a.png')])
    frame = ColmapSource(tmp_path)[0]
    np.testing.assert_allclose(frame.K, [[fx, 0, cx - 0.5], [0, fy, cy - 0.5], [0, 0, 1]])
    # The peak, not the centroid: a warp moves a blob's peak exactly with the warped point,
    # while the stretching biases its centroid by ~0.2 px here.
    np.testing.assert_allclose(_peak(frame.image[..., 0]), want, atol=0.15)


def _peak(image: np.ndarray) -> np.ndarray:
    """Sub-pixel (x, y) of a Gaussian blob's peak: a quadratic fit to log intensity, 5x5."""
    row, col = np.unravel_index(np.argmax(image), image.shape)
    du, dv = (g.ravel() for g in np.meshgrid(np.arange(-2, 3), np.arange(-2, 3)))
    window = image[row - 2:row + 3, col - 2:col + 3].astype(np.float64)
    log = np.log(np.maximum(window, 1.0)).ravel()
    design = np.stack([du * du, dv * dv, du * dv, du, dv, np.ones(25)], axis=1)
    a, b, c, d, e, _ = np.linalg.lstsq(design, log, rcond=None)[0]
    return np.array([col, row]) + np.linalg.solve([[2 * a, c], [c, 2 * b]], [-d, -e])


@pytest.mark.parametrize('writer', [_write_text, _write_binary])
@pytest.mark.parametrize('model, params', [('FOV', [60, 60, 48, 36, 0.9]),
                                           ('THIN_PRISM_FISHEYE', [60] * 2 + [48, 36] + [0] * 8)])
def test_unsupported_model_is_refused_at_open(tmp_path: Path, writer, model, params) -> None:
    # No images at all: the model is refused before image files are looked at.
    writer(tmp_path / 'sparse' / '0', [(4, model, WIDTH, HEIGHT, params)],
           [(1, np.eye(4), 4, 'a.png')])
    with pytest.raises(ValueError, match=f'camera 4 uses COLMAP model {model}, which OpenCV '
                                         'cannot undistort; supported models:.*OPENCV_FISHEYE'):
        ColmapSource(tmp_path)


def test_unknown_models_and_malformed_files(tmp_path: Path) -> None:
    model = tmp_path / 'sparse' / '0'
    _write_text(model, [(1, 'PINHOLE', WIDTH, HEIGHT, [1, 2, 3, 4])], [(1, np.eye(4), 1, 'a')])
    text = (model / 'cameras.txt').read_text()
    (model / 'cameras.txt').write_text(text.replace('PINHOLE', 'WEIRD'))
    with pytest.raises(ValueError, match="cameras.txt:3: unknown COLMAP camera model 'WEIRD'"):
        ColmapSource(tmp_path)
    (model / 'cameras.txt').write_text(text.replace(' 4.0', ''))
    with pytest.raises(ValueError, match='model PINHOLE takes 4 parameters, got 3'):
        ColmapSource(tmp_path)
    (model / 'cameras.txt').write_text(text)
    lines = (model / 'images.txt').read_text().splitlines()
    (model / 'images.txt').write_text('\n'.join(lines[:-1] + [lines[-2]]) + '\n')
    with pytest.raises(ValueError, match='images.txt:5: expected the POINTS2D line'):
        ColmapSource(tmp_path)

    binary = tmp_path / 'bin'
    _write_binary(binary, [(1, 'PINHOLE', WIDTH, HEIGHT, [1, 2, 3, 4])],
                  [(1, np.eye(4), 1, 'a.png'), (2, np.eye(4), 1, 'b.png')])
    data = (binary / 'images.bin').read_bytes()
    (binary / 'images.bin').write_bytes(data[:-5])
    with pytest.raises(ValueError, match='truncated'):
        ColmapSource(binary)
    (binary / 'images.bin').write_bytes(data + b'x')
    with pytest.raises(ValueError, match='extra data'):
        ColmapSource(binary)
    cameras = bytearray((binary / 'cameras.bin').read_bytes())
    cameras[12:16] = struct.pack('<i', 42)
    (binary / 'cameras.bin').write_bytes(bytes(cameras))
    with pytest.raises(ValueError, match='camera 1 has unknown COLMAP model id 42'):
        ColmapSource(binary)
    assert 42 not in CAMERA_MODELS


def test_images_folder_binary_preference_and_split(tmp_path: Path) -> None:
    cameras, images = _model()
    model = tmp_path / 'sparse' / '0'
    _write_binary(model, cameras, images)
    moved = [(i, pose @ make_pose(np.eye(3), [0, 0, 1]), cam, name)
             for i, pose, cam, name in images]
    _write_text(model, cameras, moved)  # both kinds: COLMAP reads the binary files
    with pytest.raises(ValueError, match='no images/ folder'):
        ColmapSource(tmp_path)
    _write_images(tmp_path, ['a.png', 'b.png'])
    with pytest.raises(ValueError, match=r'1 of the model\'s 3 images are missing.*c\.png'):
        ColmapSource(tmp_path)
    _write_images(tmp_path, [name for *_, name in images])
    # The model folder itself also opens; images/ is found two folders up.
    source = ColmapSource(model)
    np.testing.assert_allclose(source[0].world_from_cam, invert_pose(images[1][1]), atol=1e-12)
    (tmp_path / 'other').mkdir()
    (tmp_path / 'images').rename(tmp_path / 'other' / 'images')
    assert len(open_source(tmp_path, images='other/images')) == 3
    train = open_source(tmp_path, split='train', images=tmp_path / 'other' / 'images')
    assert train.names == ['a', 'b', 'cam1-c']  # 3 frames: all in the first block of 25
    assert len(open_source(tmp_path, split='test', images='other/images')) == 0
    small = tmp_path / 'other' / 'images' / 'a.png'
    assert cv2.imwrite(str(small), np.zeros((HEIGHT // 2, WIDTH // 2, 3), np.uint8))
    with pytest.raises(ValueError, match=f'image is 48x36 but COLMAP camera 1 is {WIDTH}x'):
        open_source(tmp_path, images='other/images')[0]
