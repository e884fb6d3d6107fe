#!/usr/bin/env bash
# The test command: set-up (idempotent), lint, then the test suite. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest tests            # the default suite (not slow)
.venv/bin/python -m pytest tests -m slow    # the slow tests: CI runs every test
