"""Benchmark suite: the proxy against the stack's own limits, on loopback (`make bench`).

Run `python -m benchmarks --help` for the options; results land in `benchmarks/results/`.
"""
