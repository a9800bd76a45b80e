#!/usr/bin/env bash
# Runs the whole test suite (after scripts/setup.sh). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# Two xdist workers: the ROS tests mostly wait on other processes; CI has 2 cores.
# One math thread per worker: two workers of 2 threads each oversubscribe 2 cores, and
# PyTorch's spinning threads then waste the cores (suite 10:36 -> 6:49 on 2 cores).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec .venv/bin/python -m pytest -q -n 2 "$@" test
