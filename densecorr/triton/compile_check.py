"""Compile the Triton kernels for a GPU architecture on a machine without a GPU.

The interpreter (TRITON_INTERPRET=1, tests/test_triton.py) checks what the kernels compute
but not whether the GPU compiler accepts them (tl.dot shapes, layouts, register tiles) or
whether a launch fits in shared memory. This runs the real compiler (Triton -> PTX -> cubin
with the ptxas bundled in triton) for the configurations the Python wrappers actually
launch: each wrapper is called on small CPU tensors with the launches captured instead of
run, and every distinct (kernel, argument types, constexprs, num_warps, num_stages) is
compiled for `--arch` and its shared memory compared with that GPU's per-block limit.

    python -m densecorr.triton.compile_check              # sm_90, every dtype and width
    python -m densecorr.triton.compile_check --quick      # one dtype, fewer shapes (tests)
    python -m densecorr.triton.compile_check --arch 80
    python -m densecorr.triton.compile_check --only global_attention. --first

Must run with TRITON_INTERPRET unset (compiled mode). Register spills are not checked (they
are reported only when a cubin is loaded on a device).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import torch

# Shared memory per block (bytes) with the opt-in maximum, by compute capability.
SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
_PTR = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.int64: "*i64",
        torch.int32: "*i32", torch.float64: "*fp64"}


def _calls(quick: bool):
    """(name, thunk) pairs: each thunk calls one Triton wrapper on small CPU tensors."""
    from densecorr.triton import global_attention as ga, local_attention as la
    from densecorr.triton import local_offset as lo, local_window as lw, project_coords as pc

    dtypes = [torch.bfloat16] if quick else [torch.float32, torch.float16, torch.bfloat16]
    widths = [(64, 3), (256, 7)] if quick else [(3, 1), (64, 3), (128, 7), (256, 16), (512, 3)]
    topks = [0, 10] if quick else [0, 1, 10, 64]
    boundaries = ["mask", "clamp"] if quick else ["mask", "zero", "clamp"]
    out = []
    for dt in dtypes:
        def t(*shape, dt=dt):
            return torch.randn(*shape).to(dt)

        for D, C in widths:
            for topk in topks:
                q, k, v = t(1, 80, D), t(1, 90, D), t(1, 90, C)
                idx = torch.zeros(1, 80, topk, dtype=torch.int64)
                out.append((f"global_attention D={D} C={C} topk={topk} {dt}",
                            lambda q=q, k=k, v=v, topk=topk, idx=idx: (
                                ga.global_attention_fwd(q, k, v, 0.5, topk),
                                ga.global_attention_bwd(t(1, 80, v.shape[2]), q, k, v, t(1, 80, v.shape[2]),
                                                        torch.zeros(1, 80), idx, 0.5))))
            q, k = t(1, 70, D), t(1, D, 5, 9)
            out.append((f"project_coords D={D} {dt}", lambda q=q, k=k: (
                pc.project_coords_fwd(q, k, 0.5),
                pc.project_coords_bwd(t(1, 70, 2), q, k, t(1, 70, 2), torch.zeros(1, 70), 0.5))))
            for boundary in boundaries:
                q, k, v = t(1, D, 12, 12), t(1, 2, D, 12, 12), t(1, 2, C, 12, 12)
                for topk in topks[:3]:
                    idx = torch.zeros(1, 12, 12, topk, dtype=torch.int64)
                    out.append((f"local_attention D={D} C={C} {boundary} topk={topk} {dt}",
                                lambda q=q, k=k, v=v, topk=topk, idx=idx, b=boundary: (
                                    la.local_attention_fwd(q, k, v, 2, 1, 0.5, b, "circle", topk),
                                    la.local_attention_bwd(t(1, v.shape[2], 12, 12), q, k, v,
                                                           t(1, v.shape[2], 12, 12), torch.zeros(1, 12, 12), idx,
                                                           2, 1, 0.5, b, "circle"))))
                attn = t(1, 2 * 25, 12, 12)
                out.append((f"local_affinity/copy D={D} C={C} {boundary} {dt}",
                            lambda q=q, k=k, v=v, attn=attn, b=boundary: (
                                lw.local_affinity_fwd(q, k, 2, 1, 0.5, True, b, "square"),
                                lw.local_affinity_fwd(q, k, 2, 1, 0.5, False, b, "square"),
                                lw.local_affinity_bwd(attn, q, k, attn, 2, 1, 0.5, True, b, "square"),
                                lw.local_affinity_bwd(attn, q, k, attn, 2, 1, 0.5, False, b, "square"),
                                lw.local_copy_fwd(attn, v, 2, 1, b, "square"),
                                lw.local_copy_bwd(t(1, v.shape[2], 12, 12), attn, v, 2, 1, b, "square"))))
                if boundary == "clamp":  # refused with offsets
                    continue
                off = torch.randn(1, 2, 2, 12, 12)
                for topk in topks[:3]:
                    idx = torch.zeros(1, 12, 12, topk, dtype=torch.int64)
                    out.append((f"local_offset_attention D={D} C={C} {boundary} topk={topk} {dt}",
                                lambda q=q, k=k, v=v, off=off, topk=topk, idx=idx, b=boundary: (
                                    lo.local_offset_attention_fwd(q, k, v, off, 2, 1, 0.5, b, "circle", topk),
                                    lo.local_offset_attention_bwd(t(1, v.shape[2], 12, 12), q, k, v, off,
                                                                  t(1, v.shape[2], 12, 12), torch.zeros(1, 12, 12),
                                                                  idx, 2, 1, 0.5, b, "circle"))))
                out.append((f"local_offset_affinity/copy D={D} C={C} {boundary} {dt}",
                            lambda q=q, k=k, v=v, off=off, attn=attn, b=boundary: (
                                lo.local_offset_affinity_fwd(q, k, off, 2, 1, 0.5, True, b, "square"),
                                lo.local_offset_affinity_fwd(q, k, off, 2, 1, 0.5, False, b, "square"),
                                lo.local_offset_affinity_bwd(attn, q, k, off, attn, 2, 1, 0.5, True, b, "square"),
                                lo.local_offset_affinity_bwd(attn, q, k, off, attn, 2, 1, 0.5, False, b, "square"),
                                lo.local_offset_copy_fwd(attn, v, off, 2, 1, b, "square"),
                                lo.local_offset_copy_bwd(t(1, v.shape[2], 12, 12), attn, v, off, 2, 1, b,
                                                         "square"))))
    return out


def _signature(fn, args, kwargs):
    """(signature, constexprs, options) of one captured launch, as triton.compile takes them."""
    kwargs = dict(kwargs)
    options = {"num_warps": kwargs.pop("num_warps", 4), "num_stages": kwargs.pop("num_stages", 3)}
    signature, constexprs = {}, {}
    values = dict(zip([p.name for p in fn.params], args))
    values.update(kwargs)
    for p in fn.params:
        value = values[p.name]
        if p.is_constexpr:
            signature[p.name] = "constexpr"
            constexprs[p.name] = value
        elif isinstance(value, torch.Tensor):
            signature[p.name] = _PTR[value.dtype]
        elif isinstance(value, bool):
            signature[p.name] = "i1"
        elif isinstance(value, int):
            signature[p.name] = "i32" if -(2**31) <= value < 2**31 else "i64"
        elif isinstance(value, float):
            signature[p.name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}: cannot type argument {p.name}={value!r}")
    return signature, constexprs, options


def capture(quick: bool):
    """Every distinct launch the wrappers make for the configurations of _calls."""
    from triton.runtime.jit import JITFunction

    launches, seen = [], set()
    original = JITFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        sig, const, opts = _signature(self, args, kwargs)
        key = (self.__module__, self.__name__, tuple(sig.items()), tuple(sorted(const.items())),
               tuple(sorted(opts.items())))
        if key not in seen:
            seen.add(key)
            launches.append((self.__module__, self.__name__, sig, const, opts))

    JITFunction.run = record
    try:
        for _, call in _calls(quick):
            call()
    finally:
        JITFunction.run = original
    return launches


def _compile(job):
    module, name, sig, const, opts, arch = job
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(module), name)
    start = time.perf_counter()
    try:
        kernel = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const), target=GPUTarget("cuda", arch, 32),
                                options=opts)
    except Exception as exc:  # report every failure, not only the first
        return name, const, opts, None, f"{type(exc).__name__}: {str(exc)[:800]}", time.perf_counter() - start
    return name, const, opts, kernel.metadata.shared, None, time.perf_counter() - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", type=int, default=90, choices=sorted(SHARED_LIMIT))
    ap.add_argument("--quick", action="store_true", help="bfloat16 only, two widths (the test's set)")
    ap.add_argument("--only", default="", help="comma list of substrings of '<module>.<kernel>' to keep")
    ap.add_argument("--first", action="store_true", help="only the first configuration of each kernel")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("compile_check: unset TRITON_INTERPRET (the interpreter compiles nothing)", file=sys.stderr)
        return 2
    launches = capture(args.quick)
    if args.only:
        keep = [w for w in args.only.split(",") if w]
        launches = [la for la in launches if any(w in f"{la[0].rsplit('.', 1)[-1]}.{la[1]}" for w in keep)]
    if args.first:
        firsts = {}
        for la in launches:
            firsts.setdefault((la[0], la[1]), la)
        launches = list(firsts.values())
    limit = SHARED_LIMIT[args.arch]
    print(f"compile_check: {len(launches)} distinct kernel configurations for sm_{args.arch} "
          f"(shared memory limit {limit} B)", flush=True)
    failures = 0
    jobs = [(*launch, args.arch) for launch in launches]
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for name, const, opts, shared, error, seconds in pool.map(_compile, jobs):
            desc = f"{name} {const} {opts}"
            if error:
                failures += 1
                print(f"  FAIL  {desc}\n        {error}", flush=True)
            elif shared > limit:
                failures += 1
                print(f"  FAIL  {desc}: {shared} B shared memory > {limit}", flush=True)
            else:
                print(f"  ok    {desc}: {shared} B shared, {seconds:.1f}s", flush=True)
    print(f"compile_check: {len(launches) - failures} ok, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
