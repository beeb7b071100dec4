#!/usr/bin/env python3
"""Synthesis section of the GPU check (tools/gpu_check.py runs it as its `synth` phase).

1. Correctness: the Triton `tfvaegan_synthesize` (and the native CUDA kernel, when one is
   registered) against the float64 reference on the CPU, to bf16 rounding: the largest per-row
   L2 error of the unit rows, in units of u = 2^-8 (tests/test_generator_triton.py derives the
   allowance of 6 u), at H = 1024, D = Z = A = 512 and at the wide H = 4096.
2. Throughput: rows/s, achieved TFLOP/s (FLOPs per row 2 (Z H + 2 H D + D H + 2 H^2)) and the
   percentage of the dense bf16 tensor-core peak (989 TFLOP/s, H100 and H200 SXM) at
   H = 1024, D = Z = A = 512 and H = 4096, D = Z = A = 512, N = 2^22 rows, bf16 output; one
   warm-up call (compiles), then CUDA-event timed calls (median of up to 3, fewer when the
   phase's deadline nears). The eager "torch" backend (float32, cuBLAS) at 2^16 rows is timed
   beside, for scale.

Prints one line `GPU_CHECK_JSON {...}` (the phase's result). Environment: DFZSL_SYNTH_DRY=1 (no
GPU: tiny shapes under the Triton interpreter, wall-clock times, nothing to judge speed by),
DFZSL_SYNTH_DEADLINE (seconds since the epoch), DFZSL_SYNTH_ROWS (rows timed, default 2^22).
"""

from __future__ import annotations

import json
import math
import os
import time

MARK = "GPU_CHECK_JSON "
PEAK_BF16_TFLOPS = 989.0  # dense bf16, H100 SXM (the H200 has the same tensor cores)
U = 2.0**-8
ROW_TOL_U = 6.0  # allowance in u per row (tests/test_generator_triton.py)
DRY = os.environ.get("DFZSL_SYNTH_DRY", "") == "1"
if DRY:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

DEADLINE = float(os.environ.get("DFZSL_SYNTH_DEADLINE", "0") or 0) or time.time() + 60.0
ROWS = int(os.environ.get("DFZSL_SYNTH_ROWS", str(1 << 22)))


def left() -> float:
    return DEADLINE - time.time()


def weights(H, Z, A, D, device, seed=0):
    from dfzsl_fast.ops.generator import SynthesisWeights

    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0):
        return (scale * torch.randn(*s, generator=g) / math.sqrt(s[-1])).to(device)

    return SynthesisWeights(r(H, Z), r(H, A), 0.03 * r(H), r(D, H), 0.03 * r(D), r(H, D),
                            0.03 * r(H), r(H, H), 0.03 * r(H), r(H, H), 0.03 * r(H))


def op_args(w, n, n_classes, device, dtype=None):
    """(cond, cond_index, class_ids, row_ids, *weights) of n rows spread over n_classes."""
    dtype = dtype or w.w_z.dtype
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(n_classes, w.w_a.shape[1], generator=g)
    emb = (emb / emb.norm(dim=1, keepdim=True)).to(device=device, dtype=dtype)
    cond = torch.addmm(w.b1.to(device, dtype), emb, w.w_a.to(device, dtype).T)
    cls = torch.arange(n, device=device) % n_classes
    rows = torch.arange(n, device=device) // n_classes
    tail = tuple(getattr(w, k).to(device, dtype) for k in
                 ("w_z", "w_out", "b_out", "w_dec", "b_dec", "w_fb1", "b_fb1", "w_fb2", "b_fb2"))
    return (cond, cls.clone(), cls, rows, *tail)


def correctness(fn, w, n, device, feedback=True) -> dict:
    from dfzsl_fast.reference import generator as ref

    args = op_args(w, n, 7, device)
    t0 = time.time()
    out = fn(*args, 2024, 0.9, feedback, torch.float32)
    if device.type == "cuda":
        torch.cuda.synchronize()
    secs = time.time() - t0
    a64 = op_args(w, n, 7, torch.device("cpu"), torch.float64)
    want = ref.tfvaegan_synthesize(*a64, 2024, 0.9, feedback, torch.float64)
    err = (out.double().cpu() - want).norm(dim=1)
    worst = float(err.max()) / U
    return {"rows": n, "feedback": feedback, "max_row_err_u": round(worst, 3),
            "mean_row_err_u": round(float(err.mean()) / U, 3), "allowed_u": ROW_TOL_U,
            "finite": bool(torch.isfinite(out).all()), "first_call_s": round(secs, 3),
            "ok": bool(torch.isfinite(out).all()) and worst <= ROW_TOL_U}


def throughput(fn, w, n, device, reps=1 if DRY else 3, out_dtype=torch.bfloat16) -> dict:
    from dfzsl_fast.triton.generator import flops_per_row

    H, Z = w.w_z.shape
    D = w.w_out.shape[0]
    fl = flops_per_row(H, D, Z)
    fn(*op_args(w, min(n, 4096), 200, device), 1, 0.9, True, out_dtype)  # compile, warm up
    args = op_args(w, n, 200, device)
    times = []
    for _ in range(reps):
        if times and left() < 3 * max(times) + 5:
            break
        if device.type == "cuda":
            torch.cuda.synchronize()
            e0 = torch.cuda.Event(enable_timing=True)
            e1 = torch.cuda.Event(enable_timing=True)
            e0.record()
            out = fn(*args, 7, 0.9, True, out_dtype)
            e1.record()
            e1.synchronize()
            times.append(e0.elapsed_time(e1) / 1e3)
        else:
            t0 = time.perf_counter()
            out = fn(*args, 7, 0.9, True, out_dtype)
            times.append(time.perf_counter() - t0)
        del out
    t = sorted(times)[len(times) // 2]
    tflops = fl * n / t / 1e12
    return {"H": H, "D": D, "Z": Z, "A": w.w_a.shape[1], "rows": n,
            "out_dtype": str(out_dtype).replace("torch.", ""), "flops_per_row": fl,
            "seconds_median": round(t, 6), "seconds_all": [round(x, 6) for x in times],
            "rows_per_s": round(n / t, 1), "tflops": round(tflops, 2),
            "pct_of_bf16_peak": round(100.0 * tflops / PEAK_BF16_TFLOPS, 2)}


def emit(res: dict) -> None:
    """The result so far (gpu_check reads the LAST marked line: a phase killed at its limit
    still reports what it measured)."""
    print(MARK + json.dumps(res, default=str), flush=True)


def main() -> dict:
    from dfzsl_fast import _backend
    from dfzsl_fast.triton import generator as tg

    res: dict = {"dry_run": DRY, "peak_bf16_tflops": PEAK_BF16_TFLOPS, "u": U}
    device = torch.device("cpu" if DRY or not torch.cuda.is_available() else "cuda")
    res["device"] = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    if DRY:
        shapes = {"base": (40, 20, 12, 36), "wide": (72, 20, 12, 36)}  # (H, Z, A, D)
        n_corr, n_rows = {"base": 40, "wide": 24}, 64
    else:
        shapes = {"base": (1024, 512, 512, 512), "wide": (4096, 512, 512, 512)}
        n_corr, n_rows = {"base": 1024, "wide": 256}, ROWS
    fns = {"triton": torch.ops.dfzsl_fast.tfvaegan_synthesize_triton}
    try:  # the native CUDA kernel (the dry run's CPU device would find the CPU one: not ours)
        if device.type != "cuda":
            raise ValueError("the dry run checks the GPU kernels only")
        _, native = _backend.select("tfvaegan_synthesize", device, torch.float32, "native")
        fns["native"] = native
    except Exception as exc:  # no native CUDA kernel of the op (yet)
        res["native"] = f"not available: {exc}"[:300]
    res["correctness"], res["throughput"] = {}, {}
    ok = True
    for backend, fn in fns.items():
        for name, (H, Z, A, D) in shapes.items():
            key = f"{backend}/{name}"
            w = weights(H, Z, A, D, device)
            try:
                c = correctness(fn, w, n_corr[name], device)
                c.update(H=H, D=D, Z=Z, A=A)
                if name == "base":
                    c["no_feedback"] = correctness(fn, w, n_corr[name] // 2, device, False)
                    c["ok"] = c["ok"] and c["no_feedback"]["ok"]
            except Exception as exc:
                c = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:800]}
            res["correctness"][key] = c
            ok = ok and c["ok"]
            res["ok"] = ok
            emit(res)
    for backend, fn in fns.items():
        for name, (H, Z, A, D) in shapes.items():
            key = f"{backend}/{name}"
            if left() < 10:
                res["throughput"][key] = {"skipped": "phase deadline"}
                continue
            n = n_rows
            rate = res["throughput"].get(f"{backend}/base", {}).get("tflops")
            if rate and not DRY:  # keep one timed call of this shape under left() / 6
                fl = tg.flops_per_row(H, D, Z)
                fit = int(left() / 6 * rate * 1e12 / fl)
                n = max(1 << 16, min(n, fit // 65536 * 65536))
            try:
                w = weights(H, Z, A, D, device)
                res["throughput"][key] = throughput(fn, w, n, device)
            except Exception as exc:
                res["throughput"][key] = {"error": f"{type(exc).__name__}: {exc}"[:800]}
                ok = False
            res["ok"] = ok
            emit(res)
    if device.type == "cuda":  # eager float32 baseline, for scale
        torch.backends.cuda.matmul.allow_tf32 = False
        torch_fn = _backend.select("tfvaegan_synthesize", device, torch.float32, "torch")[1]
        for name, (H, Z, A, D) in shapes.items():
            if left() < 10:
                break
            try:
                w = weights(H, Z, A, D, device)
                res["throughput"][f"torch_fp32/{name}"] = throughput(
                    torch_fn, w, 1 << 16, device, reps=2, out_dtype=torch.float32)
            except Exception as exc:
                res["throughput"][f"torch_fp32/{name}"] = {"error": f"{exc}"[:400]}
            emit(res)
    res["chunk_rows"] = {name: tg.chunk_rows(s[0], s[3]) for name, s in shapes.items()}
    res["ok"] = ok
    return res


if __name__ == "__main__":
    try:
        result = main()
    except Exception as exc:  # report, never hang the check
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
    emit(result)
