"""The CPU-kernel speed goals of issue 14, measured side by side in one process.

  python benchmarks/kernel_ratios.py [--repeats 5] [--out FILE.json]
  DENSECORR_CPU_SIMD=avx2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/kernel_ratios.py  # AVX2 path

Cases (fp32, torch's threads): global forward N = M = 4096, D = 64, C = 3 against SDPA with V
zero-padded to D, the naive bmm/softmax/bmm, and the FLOP/s of a 2048^3 torch.mm (flops of the
attention: 2*N*M*(D+C)); forward+backward at C = 16 against naive autograd; top-10 at
N = M = 6420, D = 256, C = 7 against materialise+topk. Providers alternate within each repeat;
the statistic is the median. (The local MAST case against compiled Flex Attention runs
through the harness: python -m benchmarks --suite local --cases 120x214 --providers densecorr,flex.)
"""
import argparse
import json
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

import densecorr


CLOCK = time.perf_counter


def timeit(fns, reps):
    ts = {k: [] for k in fns}
    for f in fns.values():
        f()  # warm-up
    for _ in range(reps):
        for k, f in fns.items():
            t = CLOCK()
            f()
            ts[k].append(CLOCK() - t)
    return {k: statistics.median(v) * 1e3 for k, v in ts.items()}


def unit(*shape):
    return F.normalize(torch.randn(*shape), dim=-1)


def fwd(reps):
    N = M = 4096
    D, C, s = 64, 3, 1 / 0.07
    q, k, v = unit(1, N, D), unit(1, M, D), torch.randn(1, M, C)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    with torch.no_grad():
        t = timeit(dict(
            densecorr=lambda: densecorr.global_attention(q, k, v, scale=s),
            sdpa_padV=lambda: F.scaled_dot_product_attention(q[:, None], k[:, None], F.pad(v, (0, D - C))[:, None], scale=s),
            naive=lambda: torch.bmm(torch.softmax(torch.bmm(q, k.transpose(1, 2)) * s, -1), v),
            mm_2048=lambda: a @ b,
        ), reps)
    gf = 2 * N * M * (D + C) / t["densecorr"] / 1e6
    gf_mm = 2 * 2048 ** 3 / t["mm_2048"] / 1e6
    return dict(case="global fwd N=M=4096 D=64 C=3", ms=t, x_sdpa_padV=t["sdpa_padV"] / t["densecorr"],
                x_naive=t["naive"] / t["densecorr"], gflops=gf, gflops_mm=gf_mm, frac_of_mm=gf / gf_mm)


def fwd_bwd(reps):
    N = M = 4096
    D, C, s = 64, 16, 1 / 0.07
    q, k, v = [x.requires_grad_() for x in (unit(1, N, D), unit(1, M, D), torch.randn(1, M, C))]
    go = torch.randn(1, N, C)

    def dc():
        densecorr.global_attention(q, k, v, scale=s).backward(go)

    def naive():
        torch.bmm(torch.softmax(torch.bmm(q, k.transpose(1, 2)) * s, -1), v).backward(go)

    t = timeit(dict(densecorr=dc, naive=naive), reps)
    return dict(case="global fwd+bwd N=M=4096 D=64 C=16", ms=t, x_naive=t["naive"] / t["densecorr"])


def topk(reps):
    N = M = 6420
    D, C, s, K = 256, 7, 1 / 0.07, 10
    q, k, v = unit(1, N, D), unit(1, M, D), torch.randn(1, M, C)

    def naive():
        vals, idx = (torch.bmm(q, k.transpose(1, 2)) * s).topk(K, dim=-1)
        w = torch.softmax(vals, -1)
        picked = v.gather(1, idx.reshape(1, N * K, 1).expand(-1, -1, C)).view(1, N, K, C)
        return torch.einsum("bnk,bnkc->bnc", w, picked)

    with torch.no_grad():
        t = timeit(dict(densecorr=lambda: densecorr.global_attention(q, k, v, scale=s, topk=K), naive_topk=naive), reps)
    return dict(case="global top-10 N=M=6420 D=256 C=7", ms=t, x_naive_topk=t["naive_topk"] / t["densecorr"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: process CPU time (with --threads 1, less sensitive to other load on the machine)")
    args = ap.parse_args()
    global CLOCK
    if args.clock == "cpu":
        CLOCK = time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = densecorr.build_info()
    res = dict(date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), cpu=cpu, platform=platform.platform(),
               torch=torch.__version__, threads=torch.get_num_threads(), cpu_simd=info.get("cpu_simd"),
               aten_cpu_capability=torch.backends.cpu.get_cpu_capability(),
               env={k: os.environ.get(k) for k in ("DENSECORR_CPU_SIMD", "ATEN_CPU_CAPABILITY")},
               load_average_before=os.getloadavg(), repeats=args.repeats, clock=args.clock,
               statistic="median, providers alternate",
               results=[])
    for fn in (fwd, fwd_bwd, topk):
        r = fn(args.repeats)
        res["results"].append(r)
        print(json.dumps(r), flush=True)
    res["load_average_after"] = os.getloadavg()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
