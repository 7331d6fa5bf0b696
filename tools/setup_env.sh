#!/usr/bin/env bash
# `make setup`: the venv, torch, detectron2 and the plugin (editable, with the dev extras).
# Its own file so that the set-up reruns only when it, setup.py or the detectron2 installer changes,
# not on every Makefile edit. Usage: PYTHON=python3 VENV=.venv bash tools/setup_env.sh
set -euo pipefail
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
PY="$VENV/bin/python"
test -x "$PY" || "$PYTHON" -m venv "$VENV"
"$PY" -m pip install --quiet --upgrade pip
# torch and torchvision first (the range of setup.py), then detectron2, then the plugin
"$PY" -m pip install --quiet "torch>=2.1,<=2.14.1" "torchvision>=0.16,<=0.29.1"
"$PY" tools/install_detectron2.py
"$PY" -m pip install --quiet -e ".[dev]"
