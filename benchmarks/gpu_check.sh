#!/usr/bin/env bash
# One-shot GPU check, for a session that has a GPU (written for one H200, 8-10 minutes):
# build the CUDA extension, run the test suite on CUDA, run the benchmark harness, and keep
# every log and result under one folder:
#   $OUT/gpu-<UTC date-time>               when $OUT is set (the device tool's output folder),
#   benchmarks/results/gpu-<UTC date-time> otherwise.
#
#   bash benchmarks/gpu_check.sh              # everything
#   STEPS="build gpu" bash benchmarks/gpu_check.sh   # a subset of: env build gpu offset backends tests bench
#   BENCH_ARGS="--suite local" bash benchmarks/gpu_check.sh  # (default: --suite all --quick)
#
# Time limits (seconds, overridable): LIMIT_BUILD=240 LIMIT_GPU=240 LIMIT_OFFSET=150 LIMIT_BACKENDS=120
# LIMIT_TESTS=150 LIMIT_BENCH=150, and BUDGET=570 for the whole run (a device command may
# run 10 minutes): a step gets at most what is left of BUDGET and is skipped under 30 s.
# Triton compiles most of the GPU-test time (every dtype and tile shape is its own kernel).
# With less device time, split it over two commands on the same warm machine (the build
# stays): STEPS="env build gpu offset", then STEPS="env backends tests bench".
#
# The machine needs a CUDA build of torch, triton and nvcc already installed (nothing is
# downloaded: GPU machines here have no network); the script says so and stops otherwise.
# Every step runs under its own time limit and the script goes on after a failure; the
# summary at the end (and summary.txt) lists each step's status and time.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
STAMP="$(date -u +%Y-%m-%dT%H%M%SZ)"
DEST="${OUT:-$ROOT/benchmarks/results}/gpu-$STAMP"
mkdir -p "$DEST"
PYTHON="${PYTHON:-python}"
STEPS="${STEPS:-env build gpu offset backends tests bench}"
export DENSECORR_FORCE_CUDA=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"  # H200; one arch keeps the build short
BENCH_ARGS="${BENCH_ARGS:---suite all --quick}"
SUMMARY="$DEST/summary.txt"
: >"$SUMMARY"
BUDGET="${BUDGET:-570}"

# step NAME LIMIT_SECONDS COMMAND...: runs COMMAND with a time limit, log in $DEST/NAME.log.
step() {
  local name="$1" limit="$2"
  shift 2
  case " $STEPS " in *" $name "*) ;; *) echo "skip  $name" | tee -a "$SUMMARY"; return 0 ;; esac
  local left=$((BUDGET - SECONDS))
  if [ "$left" -lt 30 ]; then
    printf '%-12s %-6s %4ss\n' "NO-TIME" "$name" 0 | tee -a "$SUMMARY"
    return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s)"
  local t0=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@" >"$DEST/$name.log" 2>&1
  rc=$?
  tail -n 25 "$DEST/$name.log"
  local verdict="ok"
  [ $rc -ne 0 ] && verdict="FAIL(rc=$rc)"
  [ $rc -eq 124 ] && verdict="TIMEOUT"
  printf '%-12s %-6s %4ss\n' "$verdict" "$name" "$((SECONDS - t0))" | tee -a "$SUMMARY"
  return $rc
}

cat >"$DEST/env_check.py" <<'PY'
import subprocess, sys
import torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)
try:
    import triton
    print("triton", triton.__version__)
except ImportError as exc:
    print("triton missing:", exc)
print(subprocess.run(["git", "log", "-1", "--format=commit %H %s"], capture_output=True, text=True).stdout.strip())
assert torch.cuda.is_available(), "torch sees no GPU (a CPU build of torch, or no driver)"
print(torch.cuda.get_device_name(0))
PY
step env 60 bash -c "set -e; nvidia-smi || true; command -v nvcc && nvcc --version | tail -1; $PYTHON '$DEST/env_check.py'" || {
  echo "this machine cannot run the GPU check (see $DEST/env.log)"
  exit 1
}

# Build in place with the CUDA sources (setup.py adds csrc/cuda when nvcc and a CUDA torch
# exist); --no-deps/--no-build-isolation: nothing to download.
step build "${LIMIT_BUILD:-240}" bash -c "$PYTHON -m pip install --no-build-isolation --no-deps -e . \
  || $PYTHON setup.py build_ext --inplace; \
  $PYTHON -c 'import densecorr; info = densecorr.build_info(); print(info); assert info.get(\"cuda\"), \"built without CUDA\"'"

# The GPU comparisons first (cuda and triton backends against the reference), then the rest.
step gpu "${LIMIT_GPU:-240}" "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_cuda.py \
  -k "not test_cuda_sources_compile and not emulated" --junitxml="$DEST/gpu-tests.xml" -ra
# The window-offset ops (issue 12) on the cuda and triton backends against the test's own
# grid_sample oracle: their own step, so that Triton's compiles cannot starve the one above.
step offset "${LIMIT_OFFSET:-150}" "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_offset_window.py \
  -k "cuda or triton" --junitxml="$DEST/offset-tests.xml" -ra
# cuda vs triton backends side by side on the kernels both have (decides
# densecorr.backends.CUDA_PREFERENCE): median of 10 CUDA-event timings, peak memory.
cat >"$DEST/backends_check.py" <<'PY'
import json, sys
import torch
import densecorr

dev = "cuda"
torch.manual_seed(0)


def timed(fn, backward, reps=10):
    """Median milliseconds of fn() (with .sum().backward() when backward) and peak extra MiB."""
    for _ in range(2):  # warm-up: compilation, caches
        out = fn()
        if backward:
            out.float().sum().backward()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        if backward:
            out.float().sum().backward()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2], (torch.cuda.max_memory_allocated() - base) / 2**20


def leaf(*shape):
    return torch.randn(*shape, device=dev).requires_grad_()


cases = [
    ("global N=M=4096 D=64 C=3", lambda b: densecorr.global_attention(Q1, K1, V1, 0.125, backend=b), ["triton", "reference"]),
    ("global top-10 N=M=4096 D=64 C=3", lambda b: densecorr.global_attention(Q1, K1, V1, 0.125, topk=10, backend=b), ["triton", "reference"]),
    ("project_coords N=4096 64x64 D=64", lambda b: densecorr.project_coords(Q1, KI, 0.125, backend=b), ["cuda", "triton"]),
    ("local 64x64 D=64 C=16 R=6 T=1", lambda b: densecorr.local_attention(QL, KL, VL, 6, scale=0.125, backend=b), ["cuda", "triton"]),
    ("local MAST 120x214 D=64 C=7 R=12 T=5", lambda b: densecorr.local_attention(QM, KM, VM, 12, scale=0.125, backend=b), ["cuda", "triton"]),
    ("local CRW circle R=12 top-10 120x214 D=64 C=7 T=5", lambda b: densecorr.local_attention(QM, KM, VM, 12, scale=0.125, window="circle", topk=10, backend=b), ["cuda", "triton"]),
    ("affinity+copy 64x64 D=64 C=16 R=6", lambda b: densecorr.local_copy(densecorr.local_affinity(QL, KL, 6, scale=0.125, backend=b), VL, 6, backend=b), ["cuda", "triton"]),
]
Q1, K1, V1 = leaf(1, 4096, 64), leaf(1, 4096, 64), leaf(1, 4096, 3)
KI = leaf(1, 64, 64, 64)
QL, KL, VL = leaf(1, 64, 64, 64), leaf(1, 64, 64, 64), leaf(1, 16, 64, 64)
QM, KM, VM = leaf(1, 64, 120, 214), leaf(1, 5, 64, 120, 214), leaf(1, 5, 7, 120, 214)
rows = []
for name, fn, backends in cases:
    for backend in backends:
        for backward in (False, True):
            try:
                ms, mib = timed(lambda: fn(backend), backward)
                rows.append(dict(case=name, backend=backend, mode="fwd+bwd" if backward else "fwd", ms=round(ms, 3), peak_mib=round(mib, 1)))
            except Exception as exc:  # report and go on: one failure must not hide the rest
                rows.append(dict(case=name, backend=backend, mode="fwd+bwd" if backward else "fwd", error=repr(exc)[:300]))
            print(json.dumps(rows[-1]), flush=True)
json.dump(dict(device=torch.cuda.get_device_name(0), torch=torch.__version__, rows=rows), open(sys.argv[1], "w"), indent=1)
PY
step backends "${LIMIT_BACKENDS:-120}" "$PYTHON" "$DEST/backends_check.py" "$DEST/backends.json"

# The rest of the suite (tests/test_cuda.py ran above; test_triton.py skips on a GPU machine).
step tests "${LIMIT_TESTS:-150}" "$PYTHON" -m pytest -q -p no:cacheprovider tests --ignore=tests/test_cuda.py \
  --junitxml="$DEST/all-tests.xml" -ra

# shellcheck disable=SC2086  # BENCH_ARGS is a list of words
step bench "${LIMIT_BENCH:-150}" "$PYTHON" -m benchmarks $BENCH_ARGS --device cuda --out "$DEST" --tag "gpu-$STAMP"

echo "== summary ($DEST)"
cat "$SUMMARY"
! grep -qv '^\(ok\|skip\) ' "$SUMMARY"
