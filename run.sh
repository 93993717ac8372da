#!/usr/bin/env bash
# One-command set-up and run on a fresh machine (CPU is enough).
#   ./run.sh eval    set up, then evaluate the default model on DAVIS, mast protocol (the main job)
#   ./run.sh test    set up, then run the test suite
#   ./run.sh setup   set up only
# Set-up: a virtual environment in .venv (override with DENSECORR_VENV), torch 2.13.0
# (pinned so pip takes the CPU wheel instead of a multi-GB CUDA build; set DENSECORR_TORCH
# to use another), and densecorr itself, editable, with its C++ extension compiled.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${DENSECORR_VENV:-.venv}"
TORCH_SPEC="${DENSECORR_TORCH:-torch==2.13.0}"

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
  fi
  # shellcheck disable=SC1091
  . "$VENV/bin/activate"
  python -m pip install -q --disable-pip-version-check "$TORCH_SPEC" setuptools wheel ninja
  # --no-build-isolation: build the extension against the torch just installed.
  python -m pip install -q --disable-pip-version-check --no-build-isolation -e ".[test]"
  python -c "import densecorr; print('densecorr', densecorr.__version__, densecorr.build_info())"
}

case "${1:-}" in
  setup) setup ;;
  test)
    setup
    shift
    python -m pytest -q "$@"
    ;;
  eval)
    setup
    shift
    densecorr eval-davis --protocol mast --out outputs/davis "$@"
    ;;
  *)
    echo "usage: ./run.sh {eval|test|setup} [extra arguments]" >&2
    exit 2
    ;;
esac
