#!/usr/bin/env bash
# Set up a fresh machine: Debian's Fashion-MNIST package, a venv in .venv, the package and its tools.
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q dataset-fashion-mnist
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
# torch and torchvision pinned: the versions this project is tested with.
.venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/pip install -q -e '.[dev]'
