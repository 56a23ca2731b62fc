#!/usr/bin/env bash
# The GPU suite on the GPU machine, from the repository root: installs the wheels carried in .whl/ (made by
# bench/fetch_gpu_wheels.sh) into /tmp/site, then runs bench/gpu_suite.py with this script's arguments.
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 bench/gpu_suite.py "$@"
