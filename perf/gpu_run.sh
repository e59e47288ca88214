#!/usr/bin/env bash
# The prepared GPU run (perf/README.md, "GPU run"): in-process GPU baselines, the embedded
# server with the GPU config variants, `offload perf` sweeps, results as files. Needs python3
# with numpy and a CUDA build of torch; the server part also needs offload's server extra
# (nvidia-pytriton, grpcio, tritonclient). No network. <= 10 minutes (--budget-s 540).
#   perf/gpu_run.sh --output DIR [--quick] [--budget-s S] [--model NAME ...]
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-}
if [ -z "$python" ]; then
    if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
# The sources, importable without installing the package (a GPU machine may have no index).
export PYTHONPATH="$PWD/client:$PWD/server:$PWD/perf:$PWD/training${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" -m offload_perf.gpu_run "$@"
