#!/usr/bin/env bash
# Runs the whole test suite (after scripts/setup.sh). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# Two xdist workers: the ROS tests mostly wait on other processes; CI has 2 cores.
exec .venv/bin/python -m pytest -q -n 2 "$@" test
