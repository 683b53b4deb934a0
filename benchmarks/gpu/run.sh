#!/usr/bin/env bash
# The accelerator benchmark kit in one command (benchmarks/gpu/kit.py; README "Running at scale").
#
#   bash benchmarks/gpu/run.sh [kit flags]          # e.g. --budget_s=450 (default), --stages=jax:afhq:bf16
#
# On a machine without ml_collections / tensorflow-datasets / array_record, the wheels that
# benchmarks/gpu/prepare_wheels.sh put in .whl/ are installed into /tmp/site first (no network).
# Ends within the kit's --budget_s (450 s) plus the install; writes one JSON to
# benchmarks/results/gpu_<device>_<date>.json and to $OUT when set.
set -u
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed" >&2; exit 1; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
# One persistent XLA cache for the stages of this run (a stage's explicit compile, then its calls).
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/discovery_jax_kit_xla_cache}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-1}"
nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv 2>/dev/null || true
exec "$PY" benchmarks/gpu/kit.py "$@"
