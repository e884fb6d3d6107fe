#!/usr/bin/env bash
# The main job on a fresh machine: set-up, then the quick Fashion-MNIST BadNets run (about 5 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/eigenguard train --profile quick --dataset fashion-mnist --attack badnets "$@"
