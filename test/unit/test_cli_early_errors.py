"""The CLI refuses bad input before its long work, and leaves nothing broken on Ctrl-C."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ace_ros import cli, pretrain as pretrain_module
from ace_ros.core import mapfile, mapper
from ace_ros.core.mapfile import load_map
from ace_ros.core.weights import random_encoder_state
from ace_ros.data.colmap import ColmapSource
from ace_ros.data.sources import FORMATS, detect_format
from ace_ros.data.synthetic import SyntheticSceneConfig, write_synthetic_scene


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


HEIGHT, WIDTH = 48, 64


@pytest.fixture(scope='module')
def tiny_scene(tmp_path_factory):
    cfg = SyntheticSceneConfig(seed=1, width=WIDTH, height=HEIGHT, focal=525 * HEIGHT / 480,
                               n_train=4, n_test=2, texel_size=0.01)
    return write_synthetic_scene(tmp_path_factory.mktemp('scene') / 'room', cfg)


@pytest.fixture
def reads(monkeypatch):
    """Counts the times a command opens its frames, or starts pretraining."""
    calls = []
    open_frames = cli._open_frames

    def counting(args):
        calls.append(args.source)
        return open_frames(args)

    def pretrain(*args, **kwargs):
        calls.append('pretrain')
        raise AssertionError('pretraining started')

    monkeypatch.setattr(cli, '_open_frames', counting)
    monkeypatch.setattr(pretrain_module, 'pretrain', pretrain)
    return calls


def _errors(caplog) -> str:
    return '\n'.join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


MAP_FLAGS = ['--preset', 'tiny', '--image-height', str(HEIGHT), '--device', 'cpu',
             '--encoder', 'random:0']


def test_map_refuses_an_unwritable_map_path_before_reading_frames(
        tiny_scene, tmp_path, reads, caplog):
    (tmp_path / 'a_file').write_text('')
    (tmp_path / 'a_folder').mkdir()
    bad = {str(tmp_path / 'missing' / 'room.ace'): 'does not exist',
           str(tmp_path / 'a_file' / 'room.ace'): 'does not exist',
           str(tmp_path / 'a_folder'): 'is a directory'}
    for path, why in bad.items():
        caplog.clear()
        assert cli.main(['map', str(tiny_scene), '-o', path, *MAP_FLAGS]) == 2
        assert path in _errors(caplog) and why in _errors(caplog), _errors(caplog)
    # The report is written after the map: it is checked as early.
    report = str(tmp_path / 'missing' / 'map.json')
    assert cli.main(['map', str(tiny_scene), '-o', str(tmp_path / 'room.ace'),
                     '--report', report, *MAP_FLAGS]) == 2
    assert report in _errors(caplog)
    assert reads == [] and not (tmp_path / 'room.ace').exists()


@pytest.mark.skipif(os.geteuid() == 0, reason='root writes into read-only folders')
def test_map_refuses_a_read_only_folder(tiny_scene, tmp_path, reads, caplog):
    folder = tmp_path / 'locked'
    folder.mkdir()
    folder.chmod(0o500)
    try:
        assert cli.main(['map', str(tiny_scene), '-o', str(folder / 'room.ace'),
                         *MAP_FLAGS]) == 2
    finally:
        folder.chmod(0o700)
    assert 'not writable' in _errors(caplog) and reads == []


def test_other_commands_check_their_outputs_before_the_work(tiny_scene, tmp_path, reads,
                                                            caplog):
    (tmp_path / 'a_file').write_text('')
    missing = tmp_path / 'missing'
    loc = ['--device', 'cpu', '--encoder', 'random:0']
    # The map is not opened either: the checks come first, so it need not exist here.
    cases = [
        (['localize', 'room.ace', str(tiny_scene), '-o', str(missing / 'p.txt'), *loc],
         str(missing / 'p.txt')),
        (['localize', 'room.ace', str(tiny_scene), '-o', str(tmp_path), *loc], str(tmp_path)),
        (['evaluate', 'room.ace', str(tiny_scene), '--json', str(missing / 'e.json'), *loc],
         str(missing / 'e.json')),
        (['evaluate', 'room.ace', str(tiny_scene), '--out', str(tmp_path / 'a_file' / 'x'),
          *loc], str(tmp_path / 'a_file' / 'x')),
        (['pretrain-encoder', '--workdir', str(tmp_path / 'a_file'), '--device', 'cpu'],
         str(tmp_path / 'a_file')),
        (['demo', '--json', str(missing / 'd.json'), '--device', 'cpu'],
         str(missing / 'd.json')),
        (['info', 'room.ace', '--plot', str(missing / 'm.png')], str(missing / 'm.png')),
    ]
    for argv, path in cases:
        caplog.clear()
        assert cli.main(argv) == 2, argv
        assert path in _errors(caplog), (argv, _errors(caplog))
    assert reads == [] and not missing.exists()


def test_evaluate_out_may_be_a_folder_still_to_create(tmp_path):
    outputs = cli._Outputs()
    outputs.folder(str(tmp_path / 'eval' / 'run1'), '--out folder')  # made by the writer
    outputs.folder(str(tmp_path), '--out folder')


@pytest.mark.parametrize('device', ['cuda', 'cuda:0', 'CUDA'])
def test_cuda_without_cuda_is_refused_at_once(tiny_scene, tmp_path, reads, caplog,
                                              monkeypatch, device):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    commands = [['map', str(tiny_scene), '-o', str(tmp_path / 'room.ace'), '--preset', 'tiny'],
                ['localize', 'room.ace', str(tiny_scene), '-o', str(tmp_path / 'p.txt')],
                ['evaluate', 'room.ace', str(tiny_scene)],
                ['pretrain-encoder', '--workdir', str(tmp_path / 'run')],
                ['demo', '--workdir', str(tmp_path / 'demo')]]
    for argv in commands:
        caplog.clear()
        assert cli.main([*argv, '--device', device]) == 2, argv
        assert f"device '{device.lower()}'" in _errors(caplog)
        assert 'CUDA is not available' in _errors(caplog)
    assert reads == [] and list(tmp_path.iterdir()) == []


def test_a_cuda_index_out_of_range_is_refused_at_once(tiny_scene, tmp_path, reads, caplog,
                                                      monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    assert cli.main(['map', str(tiny_scene), '-o', str(tmp_path / 'room.ace'),
                     '--device', 'cuda:3']) == 2
    assert "device 'cuda:3': only 1 CUDA device(s) present" in _errors(caplog)
    assert reads == []


def test_a_missing_or_broken_encoder_is_refused_before_work(tiny_scene, tmp_path, reads,
                                                            caplog):
    missing, broken = tmp_path / 'nowhere.safetensors', tmp_path / 'broken.pt'
    broken.write_bytes(b'not weights')
    runs = [['map', str(tiny_scene), '-o', str(tmp_path / 'room.ace'), '--device', 'cpu'],
            ['evaluate', 'room.ace', str(tiny_scene), '--device', 'cpu'],
            ['localize', 'room.ace', str(tiny_scene), '-o', str(tmp_path / 'p.txt')]]
    for argv in runs:
        for encoder, why in ((missing, 'no such file'), (broken, 'could not be read')):
            caplog.clear()
            assert cli.main([*argv, '--encoder', str(encoder)]) == 2
            assert str(encoder) in _errors(caplog) and why in _errors(caplog), _errors(caplog)
    caplog.clear()
    assert cli.main(['pretrain-encoder', '--workdir', str(tmp_path / 'run'),
                     '--init-encoder', str(missing)]) == 2
    assert f'--init-encoder {missing}: no such file' in _errors(caplog)
    assert reads == [] and not (tmp_path / 'run').exists()


def test_a_valid_encoder_file_passes_the_check(tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / 'enc.safetensors'
    save_file({k: v.half() for k, v in random_encoder_state(3).items()}, str(path))
    cli._check_settings('cpu', encoder=str(path))
    cli._check_settings('auto', encoder='', init_encoder='random:2')


@pytest.mark.skipif(os.geteuid() == 0, reason='root reads files without read permission')
def test_an_unreadable_encoder_is_refused(tmp_path):
    path = tmp_path / 'enc.pt'
    path.write_bytes(b'')
    path.chmod(0)
    with pytest.raises(ValueError, match='not readable'):
        cli._check_settings('cpu', encoder=str(path))


def _no_traceback(capsys) -> None:
    captured = capsys.readouterr()
    assert 'Traceback' not in captured.err + captured.out


def test_ctrl_c_while_training_writes_nothing_and_exits_130(tiny_scene, tmp_path, reads,
                                                            caplog, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mapper, 'map_frames', interrupted)
    out = tmp_path / 'out'
    out.mkdir()
    map_path = out / 'room.ace'
    assert cli.main(['map', str(tiny_scene), '--split', 'train', '-o', str(map_path),
                     '--report', str(out / 'map.json'), *MAP_FLAGS]) == 130
    assert reads == [str(tiny_scene)]  # it got as far as the frames
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [f'interrupted (Ctrl-C): nothing was written to {map_path} or '
                      f'{out / "map.json"}']
    assert list(out.iterdir()) == []
    _no_traceback(capsys)


def test_ctrl_c_while_saving_leaves_the_old_map_and_no_temporary_file(
        tiny_scene, tmp_path, caplog, capsys, monkeypatch):
    out = tmp_path / 'out'
    out.mkdir()
    map_path = out / 'room.ace'
    map_path.write_bytes(b'the previous map')

    def interrupted(fd):
        raise KeyboardInterrupt

    # fsync runs once the bytes are in the temporary file, just before it replaces the map.
    monkeypatch.setattr(mapfile.os, 'fsync', interrupted)
    assert cli.main(['map', str(tiny_scene), '--split', 'train', '-o', str(map_path),
                     '--max-iterations', '2', *MAP_FLAGS]) == 130
    assert f'interrupted (Ctrl-C): nothing was written to {map_path}' in _errors(caplog)
    assert [p.name for p in out.iterdir()] == ['room.ace']
    assert map_path.read_bytes() == b'the previous map'
    _no_traceback(capsys)


def test_ctrl_c_after_the_map_is_saved_says_it_was(tiny_scene, tmp_path, caplog, monkeypatch):
    out = tmp_path / 'out'
    out.mkdir()
    map_path, report = out / 'room.ace', out / 'map.json'

    def interrupted(path, data):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, '_write_json', interrupted)
    assert cli.main(['map', str(tiny_scene), '--split', 'train', '-o', str(map_path),
                     '--report', str(report), '--max-iterations', '2', *MAP_FLAGS]) == 130
    assert f'interrupted (Ctrl-C): written before the interruption: {map_path}' \
        == _errors(caplog)
    assert sorted(p.name for p in out.iterdir()) == ['room.ace']
    load_map(str(map_path))  # whole


def test_json_outputs_are_replaced_atomically(tmp_path, monkeypatch):
    path = tmp_path / 'summary.json'
    path.write_text('{"old": 1}\n')

    def interrupted(self, text):
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, 'write_text', interrupted)
    with pytest.raises(KeyboardInterrupt):
        cli._write_json(str(path), {'new': 2})
    monkeypatch.undo()
    assert path.read_text() == '{"old": 1}\n' and [p.name for p in tmp_path.iterdir()] \
        == ['summary.json']
    cli._write_json(str(path), {'new': 2})
    assert json.loads(path.read_text()) == {'new': 2}
