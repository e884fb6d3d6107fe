#!/usr/bin/env bash
# The test command: set-up (idempotent), lint, then the test suite. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks
# The default suite in two processes of one thread each: its tests are many and tiny, so two processes beat
# two threads in one. The slow tests (Ray, killed runs) keep one process.
OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests -n 2    # the default suite (not slow)
.venv/bin/python -m pytest tests -m slow                   # the slow tests: CI runs every test
