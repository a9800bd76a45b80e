"""Frames decode their images when used, not when read (issue 15: memory that does not grow
with the scene's frame count), and a broken image file still fails early, by name."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
import gc
from pathlib import Path
import tracemalloc
import weakref

import cv2
import numpy as np
import pytest
import torch

from ace_ros import cli
from ace_ros.bag_tools import export_bag, ExportOptions
from ace_ros.core import mapper as mapper_module
from ace_ros.core.config import mapping_config
from ace_ros.core.geometry import axis_angle_to_matrix, make_pose, matrix_to_quaternion
from ace_ros.core.mapper import Mapper
from ace_ros.core.runtime import Runtime
from ace_ros.core.types import Frame
from ace_ros.core.weights import build_encoder
from ace_ros.data import base
from ace_ros.data.ace_layout import AceLayoutSource, write_ace_scene
from ace_ros.data.base import image_size, LazyFrame
from ace_ros.data.colmap import ColmapSource
from ace_ros.data.rosbag_source import RosbagSource
from ace_ros.data.seven_scenes import SevenScenesSource
from ace_ros.data.synthetic import generate_frames, SyntheticSceneConfig
from ace_ros.data.tum import TumSource

WIDTH, HEIGHT = 160, 120
IMAGE_BYTES = WIDTH * HEIGHT * 3
K = np.array([[150.0, 0.0, 79.5], [0.0, 150.0, 59.5], [0.0, 0.0, 1.0]])
N_FRAMES = 24


def _frames(n: int = N_FRAMES, seed: int = 0) -> list[Frame]:
    rng = np.random.default_rng(seed)
    return [Frame(f'f{i:03d}', rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8), K,
                  make_pose(axis_angle_to_matrix(rng.normal(size=3) * 0.1), rng.normal(size=3)))
            for i in range(n)]


def _write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _ace(root: Path, frames: list[Frame]):
    return AceLayoutSource(write_ace_scene(root, frames))


def _seven_scenes(root: Path, frames: list[Frame]):
    for i, frame in enumerate(frames):
        _write_png(root / 'seq-01' / f'frame-{i:06d}.color.png', frame.image)
        np.savetxt(root / 'seq-01' / f'frame-{i:06d}.pose.txt', frame.world_from_cam)
    return SevenScenesSource(root, K=K)


def _tum(root: Path, frames: list[Frame]):
    rows = []
    for i, frame in enumerate(frames):
        _write_png(root / 'rgb' / f'{i}.png', frame.image)
        rows.append(f'{100 + i / 10:.6f} rgb/{i}.png')
    (root / 'rgb.txt').write_text('\n'.join(rows) + '\n')
    (root / 'intrinsics.txt').write_text(f'fx 150\nfy 150\ncx 79.5\ncy 59.5\nwidth {WIDTH}\n'
                                         f'height {HEIGHT}\nd0_k1 -0.1\n')
    return TumSource(root)


def _colmap(root: Path, frames: list[Frame]):
    (root / 'sparse').mkdir(parents=True)
    (root / 'sparse' / 'cameras.txt').write_text(f'1 PINHOLE {WIDTH} {HEIGHT} 150 150 80 60\n')
    lines = []
    for i, frame in enumerate(frames):
        _write_png(root / 'images' / f'{frame.name}.png', frame.image)
        cam_from_world = np.linalg.inv(frame.world_from_cam)
        x, y, z, w = matrix_to_quaternion(cam_from_world[:3, :3])
        t = cam_from_world[:3, 3]
        lines += [f'{i + 1} {w} {x} {y} {z} {t[0]} {t[1]} {t[2]} 1 {frame.name}.png', '']
    (root / 'sparse' / 'images.txt').write_text('\n'.join(lines) + '\n')
    return ColmapSource(root)


def _bag(root: Path, frames: list[Frame]):
    export_bag(frames, root / 'bag', ExportOptions(storage='mcap'), stamped=False)
    return RosbagSource(root / 'bag')


READERS = {'ace': _ace, 'seven_scenes': _seven_scenes, 'tum': _tum, 'colmap': _colmap,
           'rosbag': _bag}


@pytest.fixture
def decodes(monkeypatch):
    """Counts image file decodes (`load_rgb` calls) of the file readers."""
    calls = []
    load_rgb = base.load_rgb

    def counting(path):
        calls.append(Path(path).name)
        return load_rgb(path)

    monkeypatch.setattr(base, 'load_rgb', counting)
    return calls


def test_file_frames_decode_only_when_their_image_is_used(tmp_path, decodes):
    frames = _frames(6)
    folder = write_ace_scene(tmp_path, frames)
    for frame in frames:  # a focal length only: K needs the image size
        (folder / 'calibration' / f'{frame.name}.txt').write_text('150\n')
    loaded = list(AceLayoutSource(folder))
    assert decodes == []
    assert all(isinstance(f, LazyFrame) for f in loaded)
    assert [(f.width, f.height) for f in loaded] == [(WIDTH, HEIGHT)] * 6
    np.testing.assert_allclose(loaded[2].K[:2, 2], [(WIDTH - 1) / 2, (HEIGHT - 1) / 2])
    assert decodes == []

    image = loaded[2].image
    np.testing.assert_array_equal(image, frames[2].image)
    assert decodes == ['f002.png']
    assert loaded[2].image is image  # held by the caller: the same array, not decoded again
    assert decodes == ['f002.png']
    del image
    gc.collect()
    np.testing.assert_array_equal(loaded[2].image, frames[2].image)  # dropped: decoded again
    assert decodes == ['f002.png', 'f002.png']


@pytest.mark.parametrize('reader', sorted(READERS))
def test_all_frames_of_a_source_do_not_hold_their_images(tmp_path, reader):
    """What `ace-ros map` does: read every frame into a list, then use each image once."""
    frames = _frames()
    source = READERS[reader](tmp_path, frames)
    gc.collect()
    tracemalloc.start()
    try:
        loaded = list(source)
        checksums = [int(f.image.sum(dtype=np.int64)) for f in loaded]
        if reader == 'rosbag':
            # rosbags keeps the chunks it last read (mcap: ~20 of these images, whatever
            # the bag's length); closing the bag leaves what the frames hold.
            source.close()
            gc.collect()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(loaded) == N_FRAMES
    # Held eagerly, these frames would take N_FRAMES images (1.4 MB); the source's own
    # tables and a reader's buffers stay within a few.
    assert current < 4 * IMAGE_BYTES, (reader, current / IMAGE_BYTES)
    if reader != 'rosbag':
        assert peak < 8 * IMAGE_BYTES, (reader, peak / IMAGE_BYTES)
    if reader != 'tum':  # TUM's are undistorted
        assert checksums == [int(f.image.sum(dtype=np.int64)) for f in frames]


def test_bag_frames_read_back_in_any_order_and_from_threads(tmp_path):
    frames = _frames(12)
    loaded = list(_bag(tmp_path, frames))
    gc.collect()
    order = [11, 0, 5, 5, 3, 10, 1]
    for i in order:
        np.testing.assert_array_equal(loaded[i].image, frames[i].image)
    with ThreadPoolExecutor(3) as pool:  # triangulation reads images from its workers
        images = list(pool.map(lambda f: f.image, loaded[::-1] * 2))
    for got, want in zip(images, frames[::-1] * 2):
        np.testing.assert_array_equal(got, want.image)


def test_mapping_keeps_one_decoded_image_at_a_time():
    """The mapper (triangulation, then the buffer's pass) takes each image, uses it and drops
    it: the decoded images alive at once stay at the worker count, not the frame count."""
    scene = SyntheticSceneConfig(seed=1, width=WIDTH, height=HEIGHT, focal=525 * HEIGHT / 480,
                                 n_train=10, n_test=0, texel_size=0.01)
    stored = list(generate_frames(scene, 'train'))  # the "files"
    alive = [0]
    most = [0]
    loads = [0]

    def load(frame: Frame):
        image = frame.image.copy()
        loads[0] += 1
        alive[0] += 1
        most[0] = max(most[0], alive[0])
        weakref.finalize(image, lambda: alive.__setitem__(0, alive[0] - 1))
        return image

    lazy = [LazyFrame(f.name, lambda f=f: load(f), f.width, f.height, f.K, f.world_from_cam)
            for f in stored]
    cfg = mapping_config('tiny', image_height=HEIGHT, device='cpu', encoder='random:0',
                         triangulate=True, max_iterations=2, max_buffer_passes=2)
    encoder, _, _ = build_encoder(cfg.encoder, torch.device('cpu'))
    trained = Mapper(cfg, Runtime(torch.device('cpu'), encoder)).map(lazy)
    assert trained.stats.buffer_images == 2 * len(stored)
    assert loads[0] > 2 * len(stored)  # two passes, and triangulation decoded them too
    assert most[0] <= torch.get_num_threads() + 1, most[0]
    assert alive[0] == 0


# ------------------------------------------------------------------------- early errors

def _scene_with_a_broken_last_image(root: Path, damage) -> tuple[Path, Path]:
    folder = write_ace_scene(root, _frames(4))
    path = folder / 'rgb' / 'f003.png'
    data = bytearray(path.read_bytes())
    path.write_bytes(damage(data))
    return folder, path


DAMAGES = {
    'truncated': lambda data: bytes(data[:len(data) // 2]),
    'flipped byte': lambda data: bytes(data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF])
                                       + data[len(data) // 2 + 1:]),
    'not an image': lambda data: b'not a png',
    'empty': lambda data: b'',
}


@pytest.mark.parametrize('damage', sorted(DAMAGES))
def test_a_broken_image_file_is_refused_by_name_when_its_frame_is_read(tmp_path, decodes,
                                                                       damage):
    folder, path = _scene_with_a_broken_last_image(tmp_path, DAMAGES[damage])
    source = AceLayoutSource(folder)
    source[2]
    with pytest.raises(ValueError, match=f'cannot read image .*{path.name}'):
        source[3]
    if damage in ('truncated', 'flipped byte'):
        # Found from the header and the PNG checksums, nothing decoded (what Pillow does not
        # know as an image at all, OpenCV is asked to decode).
        assert decodes == []


def test_map_refuses_a_broken_image_before_mapping_starts(tmp_path, caplog, monkeypatch):
    folder, path = _scene_with_a_broken_last_image(tmp_path, DAMAGES['flipped byte'])

    def map_frames(*args, **kwargs):
        raise AssertionError('mapping started')

    monkeypatch.setattr(mapper_module, 'map_frames', map_frames)
    assert cli.main(['map', str(folder), '-o', str(tmp_path / 'room.ace'), '--preset', 'tiny',
                     '--device', 'cpu', '--encoder', 'random:0']) == 2
    errors = '\n'.join(r.getMessage() for r in caplog.records if r.levelno >= 40)
    assert str(path) in errors and 'mapping started' not in errors, errors
    assert not (tmp_path / 'room.ace').exists()


def test_a_size_that_does_not_match_the_calibration_is_refused_without_decoding(tmp_path,
                                                                                decodes):
    source = _tum(tmp_path, _frames(3))
    _write_png(tmp_path / 'rgb' / '1.png', np.zeros((HEIGHT, WIDTH + 2, 3), np.uint8))
    source[0]
    with pytest.raises(ValueError, match=f'1.png: image is {WIDTH + 2}x{HEIGHT} but '
                                         f'intrinsics.txt is for {WIDTH}x{HEIGHT}'):
        source[1]
    assert decodes == []


def test_a_file_changed_after_its_frame_was_read_is_refused_by_name(tmp_path):
    source = _ace(tmp_path, _frames(2))
    frame = source[1]
    path = source.root / 'rgb' / 'f001.png'
    _write_png(path, np.zeros((HEIGHT // 2, WIDTH, 3), np.uint8))
    with pytest.raises(ValueError, match=f'{path}: decoded image is {WIDTH}x{HEIGHT // 2}, '
                                         f'but it was {WIDTH}x{HEIGHT}'):
        frame.image


def test_image_size_reads_headers_and_follows_exif_rotation(tmp_path):
    from PIL import Image
    rgb = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: OpenCV's imread applies it
    Image.fromarray(rgb).save(tmp_path / 'rotated.jpg', exif=exif)
    Image.fromarray(rgb).save(tmp_path / 'plain.jpg')
    _write_png(tmp_path / 'plain.png', rgb)
    for name in ('rotated.jpg', 'plain.jpg', 'plain.png'):
        decoded = base.load_rgb(tmp_path / name)
        assert image_size(tmp_path / name) == (decoded.shape[1], decoded.shape[0]), name
    assert image_size(tmp_path / 'rotated.jpg') == (HEIGHT, WIDTH)
    with pytest.raises(ValueError, match='cannot read image .*missing.png: missing'):
        image_size(tmp_path / 'missing.png')
