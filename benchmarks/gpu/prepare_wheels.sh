#!/usr/bin/env bash
# Fills .whl/ (git-ignored) with the wheels benchmarks/gpu/run.sh installs on the GPU machine,
# which has jax, flax, optax, orbax, torch, numpy, pillow, scipy, absl, etils, PyYAML, ... but
# not the packages `discovery_jax.sample` needs to write its tensorflow-datasets output.
# Python 3.12, manylinux x86_64, no dependencies resolved (every one needed is listed).
# Run it here (with network to the package registry), then carry .whl with the device call.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
mkdir -p .whl
grep -qxF '/.whl/' .gitignore 2>/dev/null || grep -qxF '/.whl/' .git/info/exclude 2>/dev/null \
  || echo '/.whl/' >> .git/info/exclude
# The versions this project's CPU machines run (../shared/spec/ENVIRONMENT.md and the venv).
WHEELS=(
  ml_collections==1.1.0
  tensorflow-datasets==4.9.10
  array_record==0.8.6
  etils==1.15.0
  immutabledict==4.3.1
  tensorflow-metadata==1.21.0
  googleapis-common-protos==1.76.0
  protobuf==7.36.2
  toml==0.10.2
  importlib_resources==7.1.0
  simple-parsing==0.1.9
  termcolor==3.3.0
  dm-tree==0.1.10
)
PLATFORMS=()
for n in 2_28 2_27 2_24 2_17; do PLATFORMS+=(--platform "manylinux_${n}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d .whl "${WHEELS[@]}"
# promise has no wheel on the registry (sdist only, pure Python): build one here.
"$PY" -m pip wheel -q --no-deps -w .whl promise==2.3
ls -la .whl
du -sh .whl
