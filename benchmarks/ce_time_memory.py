"""Cosine cross-entropy forward+backward: time and peak extra memory, one provider per process.

    python benchmarks/ce_time_memory.py eager|dfzsl C

N = 65536, d = 512, fp32, scale 100. Peak memory = VmHWM - VmRSS after resetting the high-water
mark (/proc/self/clear_refs), around one forward+backward after a warm-up; min time of 3 runs.
Linux only. A quick companion of bench_cosine.py (which also checks correctness first).
"""
import sys
import time

import torch
import torch.nn.functional as F

import dfzsl_fast


def eager(x, w, t):
    z = 100.0 * F.normalize(x, dim=1) @ F.normalize(w, dim=1).T
    return F.cross_entropy(z, t)


def ours(x, w, t):
    return dfzsl_fast.cosine_cross_entropy(x, w, t, 100.0)


def rss_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1])
    raise KeyError(key)


def main() -> None:
    prov, C = sys.argv[1], int(sys.argv[2])
    N, d = 65536, 512
    torch.manual_seed(0)
    x = torch.randn(N, d, requires_grad=True)
    w = torch.randn(C, d, requires_grad=True)
    t = torch.randint(0, C, (N,))
    f = eager if prov == "eager" else ours
    f(x, w, t).backward()  # warm-up
    times = []
    for _ in range(3):
        x.grad = w.grad = None
        with open("/proc/self/clear_refs", "w") as fh:  # reset the high-water mark
            fh.write("5")
        base = rss_kb("VmRSS:")
        t0 = time.perf_counter()
        f(x, w, t).backward()
        times.append(time.perf_counter() - t0)
        peak = rss_kb("VmHWM:")
    print(f"{prov} C={C}: min {min(times) * 1e3:.0f} ms, peak extra {(peak - base) / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
