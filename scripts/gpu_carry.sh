#!/usr/bin/env bash
# Assemble .gpu/ (git-ignored) for a loaned GPU machine that has torch and torchvision but no pydantic and
# no network: the four Fashion-MNIST files and the wheels eigenguard needs there. Then, on that machine:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/wheels/*.whl \
#     && PYTHONPATH=/tmp/site:src PYTHONUNBUFFERED=1 python3 benchmarks/gpu_suite.py --data-root .gpu/data --out OUT.json
# (docs/results/performance.md, "Running the GPU suite"). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY_VERSION="${GPU_PYTHON_VERSION:-3.12}"  # the loaned H200's python3
mkdir -p .gpu/data .gpu/wheels
for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
  [ -f ".gpu/data/$f" ] || cp "/usr/share/datasets/fashion-mnist/$f" .gpu/data/
done
# pydantic and the packages it needs that the machine lacks, at the versions this checkout is tested with
for pkg in pydantic pydantic-core annotated-types typing-inspection; do
  version=$(.venv/bin/pip show "$pkg" | sed -n 's/^Version: //p')
  ls .gpu/wheels | grep -qi "^${pkg//-/_}-${version}-" && continue
  .venv/bin/pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/wheels "$pkg==$version"
done
du -sh .gpu
