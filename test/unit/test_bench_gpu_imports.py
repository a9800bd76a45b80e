"""benchmarks/bench_gpu.py runs on a bare CUDA machine: it imports no OpenVINO, rosbags, rclpy
or Pillow, and reads a scene without Pillow.

The full smoke run (benchmarks/RESULTS.md, session 21) takes minutes on a shared CPU; here
the script is imported, and its frame loading and stage timing run on a tiny scene, in a
fresh interpreter in which those packages cannot be imported.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import subprocess
import sys

from ace_ros.data.synthetic import SyntheticSceneConfig, write_synthetic_scene

ROOT = Path(__file__).resolve().parents[2]
#: What a bare CUDA machine has: torch (and what it imports), numpy, OpenCV, safetensors,
#: PyYAML, tqdm; and the source tree. (torch.fx imports pydot where it is installed, in a
#: try/except; `cython_runtime` is the module Cython extensions such as numpy.random create.)
ALLOWED = {'ace_ros', 'torch', 'torchgen', 'numpy', 'cv2', 'safetensors', 'yaml', 'tqdm',
           'typing_extensions', 'sympy', 'mpmath', 'networkx', 'jinja2', 'markupsafe',
           'filelock', 'fsspec', 'triton', 'pydot', 'cython_runtime'}
BLOCKED = ('openvino', 'nncf', 'rosbags', 'rclpy', 'PIL')

_SCRIPT = r'''
import importlib.abc
import importlib.util
import json
import sys

BLOCKED = set(sys.argv[2].split(','))


class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            raise ImportError(f'{name} is not installed on this machine (blocked)')
        return None


baseline = {n.split('.')[0] for n in sys.modules}
sys.meta_path.insert(0, Blocker())
spec = importlib.util.spec_from_file_location('bench_gpu',
                                              sys.argv[1] + '/benchmarks/bench_gpu.py')
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
after_import = sorted({n.split('.')[0] for n in sys.modules} - baseline)
bench._use_opencv_for_image_sizes()
frames, queries, decode_ms, where = bench.load_frames(sys.argv[3], 2, 0)
from ace_ros.core.config import mapping_config
from ace_ros.core.runtime import make_runtime
cfg = mapping_config('default', **bench.COMMON, **bench.SMOKE)
stages = bench.stage_times(frames, cfg, make_runtime('cpu', 'random'), batch_size=2)
print(json.dumps({
    'after_import': after_import,
    'after_run': sorted({n.split('.')[0] for n in sys.modules} - baseline),
    'frames': len(frames), 'queries': len(queries), 'where': where,
    'size': [frames[0].width, frames[0].height], 'stages': sorted(stages),
    'forbidden': bench.forbidden_modules()}))
'''


def test_bench_gpu_needs_only_what_a_bare_cuda_machine_has(tmp_path):
    scene = tmp_path / 'scene'
    write_synthetic_scene(scene, SyntheticSceneConfig(n_train=3, n_test=2, width=64,
                                                      height=48, focal=60.0))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1')
    done = subprocess.run([sys.executable, '-c', _SCRIPT, str(ROOT), ','.join(BLOCKED),
                           str(scene)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    stdlib = set(sys.stdlib_module_names)
    for when in ('after_import', 'after_run'):
        extra = {m for m in result[when] if m not in stdlib and not m.startswith('_')}
        assert extra <= ALLOWED, (when, sorted(extra - ALLOWED))
    assert result['forbidden'] == []
    assert (result['frames'], result['queries'], result['where']) == (3, 2, 'test split')
    assert result['size'] == [64, 48]
    assert 'augment_device_ms' in result['stages'] and 'encode_ms' in result['stages']


def test_the_blocker_does_block():
    """A check of the test itself: importing a blocked package fails in the subprocess."""
    script = _SCRIPT.split('baseline =')[0] + '''
sys.meta_path.insert(0, Blocker())
try:
    import PIL.Image  # noqa: F401
    print('imported')
except ImportError:
    print('blocked')
'''
    done = subprocess.run([sys.executable, '-c', script, str(ROOT), ','.join(BLOCKED)],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == 'blocked', done.stderr[-2000:]


def test_queries_are_held_out_of_train_without_a_test_split(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location('bench_gpu', ROOT / 'benchmarks' /
                                                  'bench_gpu.py')
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    scene = tmp_path / 'scene'
    write_synthetic_scene(scene, SyntheticSceneConfig(n_train=25, n_test=0, width=32,
                                                      height=24, focal=30.0))
    frames, queries, _, where = bench.load_frames(str(scene), 10, 0)
    assert 'held out' in where
    assert [q.name for q in queries] == ['frame-000005', 'frame-000015']
    assert len(frames) == 23 and not {f.name for f in frames} & {q.name for q in queries}
    frames, _, _, _ = bench.load_frames(str(scene), 10, 5)
    assert len(frames) == 5
