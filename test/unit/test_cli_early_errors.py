"""The CLI refuses bad input before its long work, and leaves nothing broken on Ctrl-C."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ace_ros import cli
from ace_ros.data.colmap import ColmapSource
from ace_ros.data.sources import FORMATS, detect_format


def _colmap_scene(root: Path) -> Path:
    """A two-image COLMAP text model with its images/ folder."""
    root.mkdir(parents=True)
    (root / 'cameras.txt').write_text('1 PINHOLE 64 48 50.0 50.0 32.0 24.0\n')
    (root / 'images.txt').write_text('1 1 0 0 0 0 0 0 1 a.png\n\n'
                                     '2 1 0 0 0 0.1 0 0 1 b.png\n\n')
    (root / 'images').mkdir()
    for name in ('a.png', 'b.png'):
        assert cv2.imwrite(str(root / 'images' / name), np.full((48, 64, 3), 128, np.uint8))
    return root


def test_format_offers_every_reader_and_colmap_can_be_forced(tmp_path):
    scene = _colmap_scene(tmp_path / 'scene')
    (scene / 'rgb.txt').write_text('# a stray TUM list: detection says tum\n')
    assert detect_format(scene) == 'tum'
    parser = cli.build_parser()
    for command in (['map', str(scene), '-o', str(tmp_path / 'x.ace')],
                    ['localize', 'room.ace', str(scene), '-o', str(tmp_path / 'poses.txt')],
                    ['evaluate', 'room.ace', str(scene)],
                    ['export-bag', str(scene), '-o', str(tmp_path / 'bag')]):
        for fmt in FORMATS:  # argparse exits on a choice it does not offer
            assert parser.parse_args([*command, '--format', fmt]).format == fmt
    args = parser.parse_args(['map', str(scene), '--format', 'colmap',
                              '-o', str(tmp_path / 'x.ace')])
    source = cli._open_frames(args)
    assert isinstance(source, ColmapSource) and source.names == ['a', 'b']
