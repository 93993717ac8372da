"""The comparison harness (densecorr.bench, `densecorr bench`, `python -m benchmarks`) end to end
on a tiny case: files, fields, ratios; the entry point's exit statuses."""
import csv
import json
import math
import os
import subprocess
import sys

import pytest

from densecorr.bench import harness, report
from densecorr.bench.cases import Case, make_inputs
from densecorr.bench.providers import PROVIDERS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    result = harness.main([
        "--suite", "smoke", "--cases", "N=512", "--providers", "densecorr,naive",
        "--modes", "forward,full", "--repeats", "2", "--out", str(out), "--tag", "t", "--threads", "1",
    ])
    return out, result


def test_files_and_fields(run):
    out, result = run
    for ext in ("json", "csv", "png"):
        assert (out / f"t.{ext}").stat().st_size > 0
    assert (out / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((out / "t.json").read_text())
    for key in ("cpu", "cores", "torch", "triton"):
        assert key in doc["machine"]
    assert "commit" in doc["git"] and doc["date"]
    assert doc["densecorr"]["build_info"]["torch"]
    rows = doc["results"]
    assert {(r["provider"], r["mode"]) for r in rows} == {
        ("densecorr", "forward"), ("densecorr", "full"), ("naive", "forward"), ("naive", "full")
    }
    for r in rows:
        assert r["status"] == "ok", r
        assert len(r["times_ms"]) == 2 and r["median_ms"] > 0
        assert r["peak_extra_mib"] is not None and r["peak_extra_mib"] >= 0
        assert r["max_abs_err"] < 1e-4  # naive and densecorr compute the same attention
    with open(out / "t.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == report.CSV_FIELDS and len(table) == len(rows)


def test_ratio_consistent_with_times(run):
    out, result = run
    rows = result["results"]
    base = {r["mode"]: r["median_ms"] for r in rows if r["provider"] == "densecorr"}
    for r in rows:
        assert math.isclose(r["ratio"], r["median_ms"] / base[r["mode"]], rel_tol=1e-9)
    with open(out / "t.csv") as f:
        for r in csv.DictReader(f):
            assert math.isclose(float(r["ratio"]), float(r["median_ms"]) / base[r["mode"]], rel_tol=1e-6)
    table = report.format_table(rows)
    assert "naive" in table and "x densecorr" in table


def test_naive_memory_is_measured(run):
    # naive materialises the 512 x 512 logits and their softmax (2 x 1 MiB) in forward; RSS
    # counters are exact to a few pages only
    _, result = run
    naive = next(r for r in result["results"] if r["provider"] == "naive" and r["mode"] == "forward")
    assert naive["peak_extra_mib"] >= 1.5


def test_local_providers_agree_with_densecorr():
    """The local alternatives compute the case's attention (zero boundary, joint softmax)."""
    import torch

    case = Case("local", H=7, W=9, D=4, C=3, radius=2, T=2, boundary="zero")
    q, k, v, _ = make_inputs(case, dtype=torch.float64)
    want = PROVIDERS["densecorr"].build(case, "cpu")(q, k, v)
    got = PROVIDERS["unfold-einsum"].build(case, "cpu")(q, k, v)
    torch.testing.assert_close(got, want)
    if PROVIDERS["sampler+unfold"].unavailable(case, "cpu") is None:
        torch.testing.assert_close(PROVIDERS["sampler+unfold"].build(case, "cpu")(q, k, v), want)


def test_topk_provider_agrees_with_densecorr():
    import torch

    case = Case("global", N=40, M=50, D=8, C=3, topk=5)
    q, k, v, _ = make_inputs(case, dtype=torch.float64)
    want = PROVIDERS["densecorr"].build(case, "cpu")(q, k, v)
    torch.testing.assert_close(PROVIDERS["naive-topk"].build(case, "cpu")(q, k, v), want)
    torch.testing.assert_close(PROVIDERS["sdpa"].build(Case("global", N=40, M=50, D=8, C=3), "cpu")(q, k, v),
                               PROVIDERS["naive"].build(Case("global", N=40, M=50, D=8, C=3), "cpu")(q, k, v))


def test_bad_arguments():
    with pytest.raises(SystemExit):
        harness.parse_args(["--providers", "nope"])
    with pytest.raises(SystemExit):
        harness.parse_args(["--modes", "sideways"])


def test_entry_point_exit_statuses(run, capsys):
    """densecorr.bench.main (what `densecorr bench` calls): 0 on success and --help, 2 on a
    usage error, one line, no traceback; `report` prints the stored table."""
    import densecorr.bench as bench

    out, _ = run
    assert bench.main(["report", str(out / "t.json")]) == 0
    assert "x densecorr" in capsys.readouterr().out
    assert bench.main(["--help"]) == 0
    assert bench.main(["--suite", "nope"]) == 2
    assert bench.main(["report"]) == 2
    assert bench.main(["report", str(out / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "missing.json" in err


def test_python_m_benchmarks_shim():
    """`python -m benchmarks` in a checkout runs the installed harness."""
    run = subprocess.run([sys.executable, "-m", "benchmarks", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert "usage: densecorr bench" in run.stdout and "--suite" in run.stdout
