#!/usr/bin/env bash
# The main job on a fresh machine in one command: sets up what is missing in .venv
# (bash scripts/setup.sh, idempotent) and runs `ace-ros demo`: renders a synthetic room, maps
# one side of it with the cpu preset and localizes held-out frames, printing their accuracy.
# Extra arguments go to `ace-ros demo` (e.g. --workdir DIR, --json FILE, --device cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/ace-ros demo "$@"
