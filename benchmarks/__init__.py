"""Comparison benchmarks of densecorr against the alternatives (see benchmarks/README.md).

The harness itself is installed with the package as densecorr.bench (`densecorr bench`);
`python -m benchmarks ...` in a checkout runs the same. Microbenchmarks:
`pytest benchmarks/ --benchmark-only`.
"""
