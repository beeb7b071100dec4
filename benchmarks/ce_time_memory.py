"""Cosine cross-entropy forward+backward: time and peak extra memory, one provider per process.

    python benchmarks/ce_time_memory.py eager|dfzsl C

N = 65536, d = 512, fp32, scale 100. Peak memory = VmHWM - VmRSS after resetting the high-water
mark (/proc/self/clear_refs), around one forward+backward after a warm-up; min time of 3 runs.
Linux only. A quick companion of bench_cosine.py (which also checks correctness first).
"""
import sys, time, torch, torch.nn.functional as F
import dfzsl_fast
prov, C = sys.argv[1], int(sys.argv[2])
N, d = 65536, 512
torch.manual_seed(0)
x = torch.randn(N, d, requires_grad=True); w = torch.randn(C, d, requires_grad=True); t = torch.randint(0, C, (N,))
def eager():
    z = 100.0 * F.normalize(x, dim=1) @ F.normalize(w, dim=1).T
    return F.cross_entropy(z, t)
def ours():
    return dfzsl_fast.cosine_cross_entropy(x, w, t, 100.0)
f = eager if prov == "eager" else ours
f().backward(); x.grad = None; w.grad = None  # warm-up
def rss_kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key): return int(line.split()[1])
times = []
for r in range(3):
    x.grad = None; w.grad = None
    open("/proc/self/clear_refs", "w").write("5")
    base = rss_kb("VmRSS:")
    t0 = time.perf_counter(); f().backward(); times.append(time.perf_counter() - t0)
    peak = rss_kb("VmHWM:")
print(f"{prov} C={C}: min {min(times)*1e3:.0f} ms, peak extra {(peak - base)/1024:.0f} MiB")
