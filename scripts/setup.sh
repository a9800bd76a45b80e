#!/usr/bin/env bash
# Builds everything ace_ros needs into .venv/ at the repository root, from nothing.
# Idempotent: re-running only installs what is missing. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
echo "[setup] installing pinned requirements (torch CPU build, numpy, OpenCV, rosbags, ...)"
"$VENV/bin/python" -m pip install -q -r requirements.txt 2>&1 | grep -v '^WARNING: Location' || true
"$VENV/bin/python" -m pip check >/dev/null || { "$VENV/bin/python" -m pip check; exit 1; }
echo "[setup] installing ace_ros (editable) into $VENV"
"$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e . 2>&1 \
  | grep -v '^WARNING: Location' || true
"$VENV/bin/python" -c "import ace_ros, torch, cv2; print('[setup] ok: ace_ros', ace_ros.__version__, '| torch', torch.__version__, '| opencv', cv2.__version__)"
echo "[setup] done: $VENV/bin/ace-ros --help"
