"""Pure-PyTorch reference kernels: the oracle of the tests, the fallback when `_C` is absent,
and the baseline of the benchmarks. Written for clarity and float64; not for speed."""
