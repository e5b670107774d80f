#!/usr/bin/env bash
# Create the virtual environment (.venv, or $DASD_VENV) and install dasd into it.
#   bash scripts/setup.sh          runtime only
#   bash scripts/setup.sh dev      + test tools
#   bash scripts/setup.sh gpu      + DeepSpeed and Liger (CUDA machines)
# torch==2.13.0 is installed first and pinned (constraints.txt) for every later install, so no resolver
# ever swaps it for another build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${DASD_VENV:-.venv}"
extras=""
for arg in "$@"; do
  case "$arg" in
    dev|gpu) extras="${extras:+$extras,}$arg" ;;
    *) echo "unknown option '$arg' (use: dev, gpu)" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
"$PY" -c 'import sys; assert sys.version_info[:2] in ((3, 11), (3, 12)), "dasd needs Python 3.11 or 3.12"'
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --quiet --quiet --disable-pip-version-check -c constraints.txt)
"${pip[@]}" "torch==2.13.0"
"${pip[@]}" -e ".${extras:+[$extras]}"
"$VENV/bin/python" -c 'import torch, dasd; print(f"dasd {dasd.__version__} ready (torch {torch.__version__})")'
