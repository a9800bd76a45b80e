"""File naming the readers accept: ACE's own scene file names and 7-Scenes' official splits."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from ace_ros.core.geometry import axis_angle_to_matrix, make_pose
from ace_ros.data.ace_layout import AceLayoutSource
from ace_ros.data.seven_scenes import SevenScenesSource
from ace_ros.data.sources import detect_format, open_source

WIDTH, HEIGHT = 32, 24
K_TEST = np.array([[30.0, 0.0, 15.5], [0.0, 31.0, 11.5], [0.0, 0.0, 1.0]])


def _ace_scene(root: Path, ids: list[str], rgb: str = '{}.color.png', pose: str = '{}.pose.txt',
               calibration: str = '{}.calibration.txt', depth: bool = True) -> dict:
    """A flat ACE-layout scene with the given file-name patterns; returns id -> (image, pose)."""
    rng = np.random.default_rng(5)
    for sub in ('rgb', 'poses', 'calibration', 'depth'):
        (root / sub).mkdir(parents=True, exist_ok=True)
    truth = {}
    for i, key in enumerate(ids):
        image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        world_from_cam = make_pose(axis_angle_to_matrix(rng.normal(size=3)), rng.normal(size=3))
        path = root / 'rgb' / rgb.format(key)
        # JPEG is lossy, so JPEG fixtures are compared loosely (a flat colour survives well).
        if path.suffix == '.jpg':
            image[:] = (40 * i + 20, 100, 200)
        assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        np.savetxt(root / 'poses' / pose.format(key), world_from_cam, fmt='%.12f')
        # ACE's setup scripts write a single focal length; K is covered by the bare-name case.
        (root / 'calibration' / calibration.format(key)).write_text('28.5\n')
        if depth:
            assert cv2.imwrite(str(root / 'depth' / f'{key}.depth.png'),
                               np.full((HEIGHT, WIDTH), 1000, np.uint16))
        truth[key] = (image, world_from_cam)
    return truth


@pytest.mark.parametrize('extension', ['png', 'jpg'])
def test_ace_setup_script_names(tmp_path: Path, extension: str) -> None:
    ids = ['frame-000000', 'frame-000001', 'frame-000002']
    truth = _ace_scene(tmp_path, ids, rgb='{}.color.' + extension)
    assert detect_format(tmp_path) == 'ace'
    source = open_source(tmp_path)
    assert source.names == ids and source.has_poses
    for frame in source:
        image, world_from_cam = truth[frame.name]
        np.testing.assert_allclose(frame.world_from_cam, world_from_cam, atol=1e-10)
        assert frame.K[0, 0] == 28.5 and frame.K[0, 2] == (WIDTH - 1) / 2
        tolerance = 0 if extension == 'png' else 8
        assert np.abs(frame.image.astype(int) - image.astype(int)).max() <= tolerance


def test_ace_bare_names_and_3x3_calibration(tmp_path: Path) -> None:
    truth = _ace_scene(tmp_path, ['a', 'b'], rgb='{}.png', pose='{}.txt',
                       calibration='{}.txt', depth=False)
    np.savetxt(tmp_path / 'calibration' / 'b.txt', K_TEST)
    source = AceLayoutSource(tmp_path)
    assert source.names == ['a', 'b']
    np.testing.assert_array_equal(source[1].K, K_TEST)
    np.testing.assert_array_equal(source[0].image, truth['a'][0])


def test_ace_mixed_suffixes_pair_by_id(tmp_path: Path) -> None:
    # Suffixed images with bare pose and calibration names (and the reverse) still pair up.
    _ace_scene(tmp_path, ['x1', 'x2'], rgb='{}.color.png', pose='{}.txt')
    source = AceLayoutSource(tmp_path)
    assert source.names == ['x1', 'x2'] and source[1].world_from_cam is not None


def test_ace_depth_images_in_rgb_are_ignored(tmp_path: Path) -> None:
    _ace_scene(tmp_path, ['frame-000000', 'frame-000001'])
    for path in (tmp_path / 'depth').iterdir():
        path.rename(tmp_path / 'rgb' / path.name)
    assert AceLayoutSource(tmp_path).names == ['frame-000000', 'frame-000001']


def test_ace_mismatched_ids_are_named(tmp_path: Path) -> None:
    _ace_scene(tmp_path, ['frame-000000', 'frame-000001', 'frame-000002'])
    (tmp_path / 'calibration' / 'frame-000001.calibration.txt').rename(
        tmp_path / 'calibration' / 'frame-000007.calibration.txt')
    with pytest.raises(ValueError, match=r"3 images but 3 calibration files; ids of images "
                       r"without a calibration file: \['frame-000001'\], of calibration files "
                       r"without an image: \['frame-000007'\]"):
        AceLayoutSource(tmp_path)


def test_ace_two_files_with_one_id(tmp_path: Path) -> None:
    _ace_scene(tmp_path, ['frame-000000'])
    np.savetxt(tmp_path / 'poses' / 'frame-000000.txt', np.eye(4))
    with pytest.raises(ValueError, match="two files with id 'frame-000000'"):
        AceLayoutSource(tmp_path)


# ------------------------------------------------------------------------------ 7-Scenes

def _seven_scenes(root: Path, sequences: list[int]) -> None:
    rng = np.random.default_rng(9)
    for seq in sequences:
        folder = root / f'seq-{seq:02d}'
        folder.mkdir(parents=True)
        image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        assert cv2.imwrite(str(folder / 'frame-000000.color.png'), image)
        np.savetxt(folder / 'frame-000000.pose.txt', np.eye(4))


def test_seven_scenes_official_split_files(tmp_path: Path) -> None:
    # As shipped: `sequenceN` lines, Windows line ends, trailing blanks, two-digit numbers.
    _seven_scenes(tmp_path, [1, 2, 3, 4, 10])
    (tmp_path / 'TrainSplit.txt').write_bytes(b'sequence1\r\nsequence3\r\nSequence10 \r\n')
    (tmp_path / 'TestSplit.txt').write_bytes(b'sequence2\r\n\r\nsequence4\r\n')
    assert detect_format(tmp_path) == 'seven_scenes'
    train = open_source(tmp_path, split='train')
    test = open_source(tmp_path, split='test')
    assert train.names == ['seq-01-frame-000000', 'seq-03-frame-000000', 'seq-10-frame-000000']
    assert test.names == ['seq-02-frame-000000', 'seq-04-frame-000000']
    assert len(open_source(tmp_path)) == 5  # no split: every seq-XX folder


def test_seven_scenes_split_errors(tmp_path: Path) -> None:
    _seven_scenes(tmp_path, [1, 2])
    (tmp_path / 'TrainSplit.txt').write_text('sequence1\nsequence5\n')
    with pytest.raises(ValueError, match=r"seq-05/ missing \(split 'train'\)"):
        SevenScenesSource(tmp_path, split='train')
    with pytest.raises(ValueError, match='needs TestSplit.txt'):
        SevenScenesSource(tmp_path, split='test')
    (tmp_path / 'TestSplit.txt').write_text('\n')
    with pytest.raises(ValueError, match='lists no sequences'):
        SevenScenesSource(tmp_path, split='test')
