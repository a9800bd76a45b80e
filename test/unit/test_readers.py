"""Dataset readers on tiny synthetic fixtures: ACE layout, 7-Scenes, TUM, format detection."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from ace_ros.core.geometry import (axis_angle_to_matrix, intrinsics_from_focal, make_pose,
                                   matrix_to_quaternion)
from ace_ros.core.types import Frame
from ace_ros.data.ace_layout import AceLayoutSource, write_ace_scene
from ace_ros.data.base import block_split, Subset
from ace_ros.data.seven_scenes import SEVEN_SCENES_K, SevenScenesSource
from ace_ros.data.sources import detect_format, open_source
from ace_ros.data.tum import interpolate_trajectory, TumSource

WIDTH, HEIGHT = 32, 24
K_TEST = np.array([[30.0, 0.0, 15.5], [0.0, 31.0, 11.5], [0.0, 0.0, 1.0]])


def _image(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)


def _pose(rng: np.random.Generator) -> np.ndarray:
    return make_pose(axis_angle_to_matrix(rng.normal(size=3)), rng.normal(size=3))


def _frames(n: int, posed: bool = True, seed: int = 0) -> list[Frame]:
    rng = np.random.default_rng(seed)
    return [Frame(name=f'f{i:03d}', image=_image(rng), K=K_TEST,
                  world_from_cam=_pose(rng) if posed else None) for i in range(n)]


def _write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


# ------------------------------------------------------------------------------ ACE layout

def test_ace_round_trip_flat(tmp_path: Path) -> None:
    frames = _frames(3)
    folder = write_ace_scene(tmp_path / 'scene', frames)
    assert folder == tmp_path / 'scene'
    assert detect_format(folder) == 'ace'
    source = open_source(folder)
    assert isinstance(source, AceLayoutSource)
    assert source.names == ['f000', 'f001', 'f002'] and source.has_poses and len(source) == 3
    for want, got in zip(frames, source):
        assert got.name == want.name
        np.testing.assert_array_equal(got.image, want.image)
        np.testing.assert_allclose(got.K, want.K, atol=1e-9)
        np.testing.assert_allclose(got.world_from_cam, want.world_from_cam, atol=1e-9)
    with pytest.raises(ValueError, match='flat ACE scene'):
        open_source(folder, split='train')


def test_ace_focal_calibration(tmp_path: Path) -> None:
    folder = write_ace_scene(tmp_path, _frames(2))
    for path in (folder / 'calibration').iterdir():
        path.write_text('28.5\n')
    frame = AceLayoutSource(folder)[1]
    np.testing.assert_allclose(frame.K, intrinsics_from_focal(28.5, WIDTH, HEIGHT))


def test_ace_split_layout(tmp_path: Path) -> None:
    write_ace_scene(tmp_path, _frames(3, seed=1), split='train')
    write_ace_scene(tmp_path, _frames(2, seed=2), split='test')
    assert detect_format(tmp_path) == 'ace'
    train = open_source(tmp_path, split='train')
    test = open_source(tmp_path, split='test')
    assert (len(train), len(test)) == (3, 2)
    np.testing.assert_array_equal(test[0].image, _frames(2, seed=2)[0].image)
    with pytest.raises(ValueError, match='pass split='):
        open_source(tmp_path)


def test_ace_unposed_frames(tmp_path: Path) -> None:
    folder = write_ace_scene(tmp_path, _frames(2, posed=False))
    source = AceLayoutSource(folder)
    assert not source.has_poses and source[0].world_from_cam is None
    mixed = _frames(2)
    mixed[1].world_from_cam = None
    with pytest.raises(ValueError, match='either all or no frames must have a pose'):
        write_ace_scene(tmp_path / 'mixed', mixed)
    with pytest.raises(FileExistsError):
        write_ace_scene(tmp_path, _frames(1))


def test_ace_mismatched_names(tmp_path: Path) -> None:
    folder = write_ace_scene(tmp_path, _frames(3))
    (folder / 'poses' / 'f001.txt').rename(folder / 'poses' / 'g001.txt')
    with pytest.raises(ValueError, match=r"3 images but 3 pose files.*'f001'.*'g001'"):
        AceLayoutSource(folder)
    (folder / 'poses' / 'g001.txt').unlink()
    with pytest.raises(ValueError, match='3 images but 2 pose files'):
        AceLayoutSource(folder)


@pytest.mark.parametrize('text, message', [
    ('1 0 0 0\n0 1 0 0\n0 0 1 0\n', 'expected 16 numbers'),
    ('1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 1 1\n', 'last row'),
    ('2 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n', 'orthonormal'),
    ('-1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n', 'det'),
    ('nan 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n', 'non-finite'),
    ('1 0 0 0\n0 1 0 0\n0 0 1 x\n0 0 0 1\n', 'only numbers'),
])
def test_ace_bad_pose(tmp_path: Path, text: str, message: str) -> None:
    folder = write_ace_scene(tmp_path, _frames(2))
    (folder / 'poses' / 'f001.txt').write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        AceLayoutSource(folder)
    assert 'f001.txt' in str(info.value)


@pytest.mark.parametrize('text, message', [
    ('1 2\n', '1 number .* or 9'),
    ('-5\n', 'focal length must be finite and > 0'),
    ('30 0 15\n0 30 11\n0 0 2\n', 'last row'),
])
def test_ace_bad_calibration(tmp_path: Path, text: str, message: str) -> None:
    folder = write_ace_scene(tmp_path, _frames(1))
    (folder / 'calibration' / 'f000.txt').write_text(text)
    with pytest.raises(ValueError, match=message):
        AceLayoutSource(folder)
    with pytest.raises(ValueError, match='split must be one of'):
        open_source(folder, split='val')


def test_unreadable_image(tmp_path: Path) -> None:
    folder = write_ace_scene(tmp_path, _frames(2))
    (folder / 'rgb' / 'f001.png').write_bytes(b'not a png')
    source = AceLayoutSource(folder)
    source[0]
    with pytest.raises(ValueError, match='f001.png'):
        source[1]


def test_subset_and_indexing(tmp_path: Path) -> None:
    source = AceLayoutSource(write_ace_scene(tmp_path, _frames(4)))
    assert source[-1].name == 'f003'
    with pytest.raises(IndexError, match='out of range for 4'):
        source[4]
    subset = Subset(source, [3, 1])
    assert subset.names == ['f003', 'f001'] and subset.root == source.root
    assert [f.name for f in subset] == ['f003', 'f001'] and subset.has_poses
    assert source[1:3].names == ['f001', 'f002']
    with pytest.raises(IndexError):
        Subset(source, [0, 9])


def test_block_split() -> None:
    assert block_split(10, 2, 0) == [0, 1, 4, 5, 8, 9]
    assert block_split(10, 2, 1) == [2, 3, 6, 7]
    assert sorted(block_split(100, 25, 0) + block_split(100, 25, 1)) == list(range(100))
    with pytest.raises(ValueError, match='parity'):
        block_split(10, 2, 2)
    with pytest.raises(ValueError, match='block'):
        block_split(10, 0, 0)


# ------------------------------------------------------------------------------ 7-Scenes

def _seven_scenes(root: Path) -> dict[str, np.ndarray]:
    """Three sequences of two frames; sequences 1 and 3 train, 2 test. Returns name -> pose."""
    rng = np.random.default_rng(7)
    poses = {}
    for seq in (1, 2, 3):
        for i in range(2):
            stem = root / f'seq-{seq:02d}' / f'frame-{i:06d}'
            _write_png(stem.with_name(stem.name + '.color.png'), _image(rng))
            poses[f'seq-{seq:02d}-frame-{i:06d}'] = _pose(rng)
            np.savetxt(stem.with_name(stem.name + '.pose.txt'),
                       poses[f'seq-{seq:02d}-frame-{i:06d}'], fmt='%.10f', delimiter='\t')
    (root / 'TrainSplit.txt').write_text('sequence1\nsequence3\n')
    (root / 'TestSplit.txt').write_text('sequence2\n')
    return poses


def test_seven_scenes(tmp_path: Path) -> None:
    poses = _seven_scenes(tmp_path)
    assert detect_format(tmp_path) == 'seven_scenes'
    train = open_source(tmp_path, split='train')
    assert train.names == ['seq-01-frame-000000', 'seq-01-frame-000001',
                           'seq-03-frame-000000', 'seq-03-frame-000001']
    assert open_source(tmp_path, split='test').names == ['seq-02-frame-000000',
                                                         'seq-02-frame-000001']
    everything = SevenScenesSource(tmp_path)
    assert len(everything) == 6 and everything.has_poses
    frame = everything[2]
    np.testing.assert_allclose(frame.world_from_cam, poses[frame.name], atol=1e-9)
    np.testing.assert_array_equal(frame.K, SEVEN_SCENES_K)
    assert frame.image.shape == (HEIGHT, WIDTH, 3)
    assert SevenScenesSource(tmp_path, K=K_TEST)[0].K[0, 0] == K_TEST[0, 0]
    (tmp_path / 'seq-02' / 'frame-000001.pose.txt').unlink()
    with pytest.raises(ValueError, match='2 images but 1 pose files'):
        SevenScenesSource(tmp_path, split='test')
    (tmp_path / 'TestSplit.txt').write_text('seq2\n')
    with pytest.raises(ValueError, match='sequence1'):
        SevenScenesSource(tmp_path, split='test')


# ------------------------------------------------------------------------------ TUM

T0 = 1000.0
VELOCITY = np.array([0.3, -0.2, 0.1])  # m/s
YAW_RATE = 0.5  # rad/s, about z


def _tum_pose(t: float) -> np.ndarray:
    return make_pose(axis_angle_to_matrix([0.0, 0.0, YAW_RATE * t]),
                     np.array([1.0, 2.0, 3.0]) + VELOCITY * t)


def _tum_sequence(root: Path, intrinsics: str | None = None) -> list[float]:
    """GT at 100 Hz over [0, 1] s with a 0.1 s hole at [0.6, 0.7]; returns image stamps."""
    rng = np.random.default_rng(3)
    stamps = [-0.05, 0.0, 0.2345, 0.65, 0.9871, 1.2]
    lines = ['# timestamp filename']
    for t in stamps:
        name = f'rgb/{T0 + t:.6f}.png'
        _write_png(root / name, _image(rng))
        lines.append(f'{T0 + t:.6f} {name}')
    (root / 'rgb.txt').write_text('\n'.join(lines) + '\n')
    gt = ['# ground truth trajectory', '# timestamp tx ty tz qx qy qz qw']
    for t in np.arange(101) / 100.0:
        if 0.6 < t < 0.7:
            continue
        pose = _tum_pose(t)
        values = [T0 + t, *pose[:3, 3], *matrix_to_quaternion(pose[:3, :3])]
        gt.append(' '.join(f'{v:.9f}' for v in values))
    (root / 'groundtruth.txt').write_text('\n'.join(gt) + '\n')
    if intrinsics is not None:
        (root / 'intrinsics.txt').write_text(intrinsics)
    return stamps


INTRINSICS = f"""# comment
width {WIDTH}
height {HEIGHT}
fx 30.0
fy 31.0
cx 15.5
cy 11.5
# distortion d0..d4 = k1 k2 p1 p2 k3
d0_k1 {{k1}}
d1_k2 0.0
d2_p1 0.0
d3_p2 0.0
d4_k3 0.0
depth_scale 5000
"""


def test_tum_interpolation(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    stamps = _tum_sequence(tmp_path, INTRINSICS.format(k1=0.0))
    assert detect_format(tmp_path) == 'tum'
    with caplog.at_level(logging.WARNING):
        source = open_source(tmp_path)
    assert '3 of 6 frames have no pose (2 outside' in caplog.text
    assert isinstance(source, TumSource) and source.has_poses and not source.distorted
    assert source.names[2] == f'{T0 + 0.2345:.6f}'
    posed = [source[i].world_from_cam is not None for i in range(len(source))]
    assert posed == [False, True, True, False, True, False]
    for i in (1, 2, 4):
        frame = source[i]
        assert frame.stamp == pytest.approx(T0 + stamps[i])
        np.testing.assert_allclose(frame.world_from_cam, _tum_pose(stamps[i]), atol=1e-6)
        np.testing.assert_array_equal(frame.K, K_TEST)
    wide = TumSource(tmp_path, max_gap_s=0.2)
    np.testing.assert_allclose(wide[3].world_from_cam, _tum_pose(0.65), atol=1e-6)
    assert [f.name for f in open_source(tmp_path, split='test')] == []
    assert len(open_source(tmp_path, split='train')) == 6


def test_interpolate_trajectory_exact_sample() -> None:
    times = np.array([0.0, 1.0])
    poses = [_tum_pose(0.0), _tum_pose(1.0)]
    result = interpolate_trajectory(times, poses, np.array([1.0, 0.5, 1.5]), max_gap_s=2.0)
    np.testing.assert_array_equal(result[0], poses[1])
    np.testing.assert_allclose(result[1], _tum_pose(0.5), atol=1e-12)
    assert result[2] is None


def test_tum_undistortion(tmp_path: Path) -> None:
    _tum_sequence(tmp_path, INTRINSICS.format(k1=-0.3))
    source = TumSource(tmp_path)
    assert source.distorted
    raw = cv2.cvtColor(cv2.imread(str(tmp_path / f'rgb/{T0 + 0.2345:.6f}.png')),
                       cv2.COLOR_BGR2RGB)
    expected = cv2.undistort(raw, K_TEST, np.array([-0.3, 0.0, 0.0, 0.0, 0.0]))
    frame = source[2]
    assert not np.array_equal(frame.image, raw)
    assert np.abs(frame.image.astype(int) - expected.astype(int)).max() <= 1
    np.testing.assert_array_equal(frame.K, K_TEST)


def test_tum_intrinsics_argument(tmp_path: Path) -> None:
    _tum_sequence(tmp_path)
    with pytest.raises(ValueError, match='no intrinsics.txt and no K'):
        TumSource(tmp_path)
    K_other = K_TEST.copy()
    K_other[0, 0] = 40.0
    frame = TumSource(tmp_path, K=K_other)[1]
    np.testing.assert_array_equal(frame.K, K_other)


def test_detect_format_unknown(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match='looked for ACE.*TUM.*7-Scenes'):
        detect_format(tmp_path)
    with pytest.raises(FileNotFoundError):
        detect_format(tmp_path / 'missing')
    with pytest.raises(ValueError, match='fmt must be one of'):
        open_source(tmp_path, fmt='nvm')


def test_frame_drops_negligible_skew_and_refuses_real_skew() -> None:
    image = np.zeros((480, 640, 3), np.uint8)
    K = np.array([[1156.9, 0.000238, 329.0], [0.0, 1153.3, 247.3], [0.0, 0.0, 1.0]])  # DTU
    frame = Frame(name='dtu', image=image, K=K)
    assert frame.K[0, 1] == 0.0 and K[0, 1] == 0.000238  # the caller's array is untouched
    K[0, 1] = 0.01  # 4.8 px across the image
    with pytest.raises(ValueError, match='skew 0.01'):
        Frame(name='skewed', image=image, K=K)
