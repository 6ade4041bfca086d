#!/usr/bin/env bash
# The GPU suite on a lent GPU machine (no network), in the repository root, in one command:
# installs the wheels carried in .whl/ (made here by `python benchmarks/gpu_wheels.py`), then runs
# benchmarks/gpu_suite.py with the table and log written to $OUT (or ./gpu_out). Extra arguments
# go to the suite, e.g. `bash benchmarks/gpu_run.sh --only bootstrap_100k,probe_768`.
set -uo pipefail
out="${OUT:-$PWD/gpu_out}"
mkdir -p "$out"
python="${PYTHON:-python3}"
wheels="${GPU_WHEELS:-.whl}"  # where the carried wheels are
site="${GPU_SITE:-/tmp/site}"  # where they are installed
if compgen -G "$wheels/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" "$wheels"/*.whl || { echo "installing $wheels/*.whl failed" >&2; exit 1; }
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true; } \
    >"$out/nvidia-smi.txt" 2>&1
"$python" benchmarks/gpu_suite.py --no-install --out "$out/gpu_suite.json" "$@" 2>&1 \
    | tee "$out/gpu_suite.log"
