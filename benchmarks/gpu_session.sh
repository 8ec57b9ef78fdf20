#!/usr/bin/env bash
# The GPU session on the device machine (docs/gpu-session.md): installs the wheels carried in
# .gpu-wheels (made here by `python benchmarks/gpu_wheels.py`) into /tmp/site, then runs
# benchmarks/gpu_session.py with its results in $OUT. Extra arguments go to gpu_session.py.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/out/gpu-session}"
mkdir -p "$out"
if ! python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu-wheels/*.whl; then
  echo "gpu_session.sh: could not install .gpu-wheels/*.whl; run 'python benchmarks/gpu_wheels.py' and carry .gpu-wheels" >&2
  exit 2
fi
export PYTHONPATH="/tmp/site:$PWD/src" PYTHONUNBUFFERED=1
python3 -m pip list 2>/dev/null | grep -iE '^(torch|diffusers|transformers|peft|accelerate|h5py|hdf5plugin|open.clip.torch|huggingface.hub|pandas|typer|rich|numpy) ' || true
exec python3 benchmarks/gpu_session.py --out "$out" "$@"
