"""Smoke test of an installed densecorr, run by .ci/run from a directory outside the checkout:
the kernels are in use (compiled at first use, or the packaged build when
DENSECORR_EXPECT_ORIGIN=package), agree with plain PyTorch, and the command works.

    python .ci/smoke.py     # prints one line: densecorr VERSION, origin, seconds to load
"""
import os
import subprocess
import sys
import time

here = os.path.dirname(os.path.abspath(__file__))
assert not os.getcwd().startswith(os.path.dirname(here)), "run the smoke test outside the checkout"

import torch  # noqa: E402

import densecorr  # noqa: E402

assert os.path.dirname(os.path.dirname(os.path.abspath(densecorr.__file__))) != os.path.dirname(here), (
    f"densecorr imported from the checkout ({densecorr.__file__}), not from the installation")
start = time.time()
info = densecorr.build_info()  # compiles the kernels if this is their first use
seconds = time.time() - start
assert info["extension"], f"the kernels are not in use: {info}"
want = os.environ.get("DENSECORR_EXPECT_ORIGIN")
assert want is None or info["origin"].startswith(want), f"origin {info['origin']!r}, expected {want!r}"
assert densecorr.available_backends("global_attention_fwd")["cpu"] is None

g = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(2, n, d, generator=g) for n, d in ((50, 8), (60, 8), (60, 3)))
want_out = torch.softmax(0.5 * q @ k.transpose(1, 2), -1) @ v
torch.testing.assert_close(densecorr.global_attention(q, k, v, scale=0.5, backend="cpu"), want_out)
qi = torch.randn(1, 4, 9, 9, generator=g)
torch.testing.assert_close(densecorr.local_attention(qi, qi, qi, 2, backend="cpu"),
                           densecorr.local_attention(qi, qi, qi, 2, backend="reference"))

version = subprocess.run([sys.executable, "-m", "densecorr", "--version"], capture_output=True, text=True)
assert version.returncode == 0 and version.stdout.strip() == f"densecorr {densecorr.__version__}", version
print(f"smoke ok: densecorr {densecorr.__version__}, torch {torch.__version__}, kernels {info['origin']} "
      f"(abi {info['abi']}, built for torch {info['built_for_torch']}), build_info() took {seconds:.1f} s")
