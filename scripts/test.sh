#!/usr/bin/env bash
# Runs the whole test suite, setting up first what is missing: on a fresh machine this one
# command builds .venv (bash scripts/setup.sh --test) and then tests. Extra arguments go to
# pytest. The suite needs requirements-test.txt (pytest, pytest-xdist, and OpenVINO + NNCF,
# which test/unit/test_backends.py tests on every CPU): where .venv is missing or lacks any of
# its pins, this runs `bash scripts/setup.sh --test` first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
if [ ! -x "$PY" ]; then
  echo "[test] no .venv yet: bash scripts/setup.sh --test"
  bash scripts/setup.sh --test
elif ! "$PY" - requirements-test.txt <<'CHECK'
import importlib.metadata as metadata
import sys
from pathlib import Path


def pins(path):
    """(name, version) of each `name==version` line, following `-r` includes."""
    for line in Path(path).read_text().splitlines():
        line = line.split('#')[0].strip()
        if line.startswith('-r'):
            yield from pins(Path(path).parent / line[2:].strip())
        elif '==' in line:
            name, version = line.split('==')
            yield name.strip(), version.strip()


missing = []
for name, version in pins(sys.argv[1]):
    try:
        if metadata.version(name) != version:
            missing.append(f'{name}=={version} (installed: {metadata.version(name)})')
    except metadata.PackageNotFoundError:
        missing.append(f'{name}=={version}')
if missing:
    print('[test] .venv lacks the test requirements', ', '.join(missing), file=sys.stderr)
sys.exit(1 if missing else 0)
CHECK
then
  echo "[test] installing them: bash scripts/setup.sh --test"
  bash scripts/setup.sh --test
fi
# Two xdist workers: the ROS tests mostly wait on other processes; CI has 2 cores.
# One math thread per worker: two workers of 2 threads each oversubscribe 2 cores, and
# PyTorch's spinning threads then waste the cores (suite 10:36 -> 6:49 on 2 cores).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$PY" -m pytest -q -n 2 "$@" test
