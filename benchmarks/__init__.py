"""Comparison benchmarks of densecorr against the alternatives (see benchmarks/README.md).

`python -m benchmarks --help`; microbenchmarks: `pytest benchmarks/ --benchmark-only`.
"""
