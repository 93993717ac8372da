#!/usr/bin/env bash
# One-command set-up and run on a fresh machine (CPU is enough).
#   ./run.sh eval    set up (the package only), then evaluate the default model on DAVIS
#                    (dino protocol, the default; the main job)
#   ./run.sh test    set up with the test tools, then run the test suite (pytest arguments pass through)
#   ./run.sh setup   set up with the test tools only
# Set-up: a virtual environment in .venv (override with DENSECORR_VENV), torch 2.13.0
# (pinned so pip takes the CPU wheel instead of a multi-GB CUDA build; set DENSECORR_TORCH
# to use another), densecorr itself, editable, and its C++ extension compiled in place.
# A stamp in the venv records what was installed (hashes of pyproject.toml, setup.py, the
# torch pin and the extras) and what was compiled (csrc/ and densecorr/_buildcfg.py): a
# call where nothing changed installs and compiles nothing; a change in csrc/ recompiles
# only the extension (ninja, incremental).
set -euo pipefail
cd "$(dirname "$0")"
VENV="${DENSECORR_VENV:-.venv}"
TORCH_SPEC="${DENSECORR_TORCH:-torch==2.13.0}"
STAMP="$VENV/.densecorr-stamp"

hash_of() { cat "$@" | sha256sum | cut -c1-16; }

setup() {  # $1: the extras wanted ("" or "test")
  local extras="$1" start deps src have_deps have_src have_extras
  start=$(date +%s)
  if [ ! -x "$VENV/bin/python" ]; then
    echo "run.sh: creating the virtual environment $VENV"
    python3 -m venv "$VENV"
  fi
  # shellcheck disable=SC1091
  . "$VENV/bin/activate"
  deps=$( { echo "$TORCH_SPEC"; cat pyproject.toml setup.py; } | sha256sum | cut -c1-16)
  src=$(find csrc -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \) | sort | xargs cat densecorr/_buildcfg.py | sha256sum | cut -c1-16)
  have_deps="" have_src="" have_extras=""
  if [ -f "$STAMP" ]; then read -r have_deps have_src have_extras < "$STAMP" || true; fi
  # extras already installed (when the dependencies did not change) plus the ones wanted now
  local all="$extras"
  if [ "$deps" = "$have_deps" ] && [ -n "$have_extras" ] && [ "$have_extras" != "-" ]; then
    all="$have_extras"
    case ",$have_extras," in *",$extras,"*) ;; *) [ -n "$extras" ] && all="$have_extras,$extras" ;; esac
  fi
  if [ "$deps" != "$have_deps" ] || [ "$all" != "${have_extras#-}" ]; then
    local spec="."
    [ -n "$all" ] && spec=".[$all]"
    echo "run.sh: installing $TORCH_SPEC and densecorr ($spec, editable) into $VENV"
    python -m pip install -q --disable-pip-version-check "$TORCH_SPEC" setuptools wheel ninja
    # The extension is compiled below (with progress), not by pip.
    DENSECORR_NO_EXTENSION=1 python -m pip install -q --disable-pip-version-check --no-build-isolation -e "$spec"
    [ "$deps" != "$have_deps" ] && have_src=""  # another torch or build set-up: recompile
  fi
  have_extras="$all"
  if [ "$src" != "$have_src" ]; then
    echo "run.sh: compiling the C++ extension densecorr._C (1-3 minutes on 2 cores; later calls skip this)"
    local t0 log="$VENV/densecorr-build.log"
    t0=$(date +%s)
    if ! python setup.py build_ext --inplace > "$log" 2>&1; then
      grep -E 'error' "$log" | head -20 >&2
      echo "run.sh: building the extension failed; the full log is $log" >&2
      exit 1
    fi
    grep -E '^\[[0-9]+/[0-9]+\]' "$log" | sed -E 's/^(\[[0-9]+\/[0-9]+\]) .* -c ([^ ]+) .*/  \1 \2/' || true
    echo "run.sh: compiled in $(( $(date +%s) - t0 )) s (log: $log)"
  fi
  echo "$deps $src ${have_extras:--}" > "$STAMP"
  python -c "import densecorr; print('densecorr', densecorr.__version__, densecorr.build_info())"
  echo "run.sh: set-up took $(( $(date +%s) - start )) s"
}

case "${1:-}" in
  setup) setup test ;;
  test)
    setup test
    shift
    python -m pytest -q "$@"
    ;;
  eval)
    setup ""
    shift
    densecorr eval-davis --out outputs/davis "$@"
    ;;
  *)
    echo "usage: ./run.sh {eval|test|setup} [extra arguments]" >&2
    exit 2
    ;;
esac
