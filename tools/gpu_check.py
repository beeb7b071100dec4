#!/usr/bin/env python3
"""The prepared GPU check (issue 9): build, CUDA and Triton tests, GPU benchmarks, one JSON file.

Run through `bash tools/gpu_check.sh` (README "GPU check"); that script only picks the Python and
runs this file, which uses the standard library alone (it starts before any wheel is installed).

Phases, each in its own process group with its own time budget, none stopping the next:

    wheels        install the carried .whl wheels whose distributions this Python lacks
    env           nvidia-smi, nvcc, Python / torch / Triton / package versions, GPU properties
    build         `setup.py build_ext --inplace` against THIS machine's torch (FORCE_CUDA=1
                  when an nvcc is found)
    native        what _C was built with, which ops have CUDA kernels, a tiny sample per
                  backend on the GPU, and tests/test_registration.py
    synth         tools/gpu_check_synth.py: the Triton (and native CUDA, when registered)
                  tfvaegan_synthesize against the CPU float64 reference to bf16 rounding, and
                  its throughput (rows/s, TFLOP/s, % of the 989 TFLOP/s bf16 peak) at
                  H=1024, D=Z=A=512 and H=4096, D=Z=A=512, 2^22 rows; "synthesis" in the JSON
    tests_cuda    pytest -m cuda over the test files that name the mark (pytest-xdist, 4 workers,
                  when installed)
    tests_triton  pytest -m triton likewise: on the GPU, not the interpreter
    bench         pytest-benchmark, the CUDA cases of bench_vmf, bench_cosine, bench_pipeline
                  (the final-classifier epoch among them), bench_stage1 (the stage-1 step)
    tests_rest    the rest of the suite (not cuda, not triton, not slow) with the time left

Every pytest phase loads tools/gpu_check_pytest.py: it records each test's outcome as it ends and
skips what is left once the phase's budget is spent, so a phase ends cleanly rather than being
killed; a hard kill (process group) follows only if a single test overruns.

Output (in $OUT, else ./gpu_check_out): gpu_check.json (see README "GPU check"), and in logs/ the
combined log of all phases (each capped), the raw pytest-benchmark JSON and, when a log was
capped, the full logs as a tarball: 4 files at most (the device tool returns 8).

    --dry-run (or DFZSL_GPU_CHECK_DRY=1): on a machine without a GPU, run every phase in its
    cheap form: no wheel is installed unless missing, the existing _C is reused (no build), the
    CUDA tests run (and skip), the Triton tests are only collected (the interpreter is slow), one
    small CPU benchmark runs to exercise the benchmark table, synth runs its tiny shapes under
    the Triton interpreter (correctness only means something there), tests_rest is skipped.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import glob
import hashlib
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")
SCHEMA = "dfzsl_fast.gpu_check/1"
MARK = "GPU_CHECK_JSON "
PHASES = ("wheels", "env", "build", "native", "synth", "tests_cuda", "tests_triton", "bench",
          "tests_rest")
# Seconds per phase; their sum (without tests_rest, which gets what is left) stays under TOTAL_S.
BUDGETS = {
    "wheels": 15,
    "env": 15,
    "build": 140,
    "native": 40,
    "synth": 60,
    "tests_cuda": 50,
    "tests_triton": 70,
    "bench": 75,
    "tests_rest": 150,  # at most; it gets what the others left of TOTAL_S
}
TOTAL_S = 465  # the whole run, inside the 8 minutes of issue 9 (the JSON is written after)
GRACE_S = 15  # pytest phases: stop starting tests this long before the phase's limit
PER_TEST_TIMEOUT_S = 120  # pytest-timeout, where installed
LOG_CAP = 256 * 1024  # bytes of each phase's log in the combined log (its tail)
BUDGET_REASON = "gpu_check: phase budget reached"  # as in gpu_check_pytest.py
BENCH_FILES = ("benchmarks/bench_vmf.py", "benchmarks/bench_cosine.py",
               "benchmarks/bench_pipeline.py", "benchmarks/bench_stage1.py")
PACKAGES = (
    "torch", "triton", "numpy", "scipy", "pytest", "pytest-benchmark", "pytest-xdist",
    "pytest-timeout", "hypothesis", "mpmath", "safetensors", "tqdm", "open_clip_torch", "timm",
    "torchvision", "huggingface_hub", "ftfy", "setuptools", "ninja", "scikit-learn", "matplotlib",
)

ENV_PROBE = r"""
import glob, json, os, platform, sys
out = {"python": platform.python_version(), "executable": sys.executable,
       "platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count()}
try:
    with open("/proc/meminfo") as fh:
        out["mem_total_gib"] = round(int(fh.readline().split()[1]) / 2**20, 1)
except Exception:
    pass
from importlib import metadata
pk = {}
for n in PACKAGES:
    try:
        pk[n] = metadata.version(n)
    except Exception:
        pk[n] = None
out["packages"] = pk
try:
    import torch
    out["torch"] = torch.__version__
    out["torch_cuda"] = torch.version.cuda
    out["torch_cxx11_abi"] = bool(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True))
    try:
        out["cudnn"] = torch.backends.cudnn.version()
    except Exception:
        out["cudnn"] = None
    out["cuda_available"] = torch.cuda.is_available()
    devs = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            devs.append({"index": i, "name": p.name, "compute_capability": f"{p.major}.{p.minor}",
                         "multiprocessors": p.multi_processor_count,
                         "total_memory_gib": round(p.total_memory / 2**30, 1),
                         "l2_cache_mb": round(getattr(p, "L2_cache_size", 0) / 2**20, 1) or None})
    out["gpus"] = devs
except Exception as exc:
    out["torch_error"] = f"{type(exc).__name__}: {exc}"
try:
    import triton
    out["triton"] = triton.__version__
except Exception as exc:
    out["triton_error"] = f"{type(exc).__name__}: {exc}"
inc = []
for sp in sys.path:
    inc += glob.glob(os.path.join(sp, "nvidia", "*", "include"))
out["nvidia_wheel_includes"] = sorted(set(inc))
print("MARK" + json.dumps(out, default=str))
"""

NATIVE_PROBE = r"""
import json, time
import torch
out = {}
import dfzsl_fast
from dfzsl_fast import _extension
out["config"] = _extension.config()
try:
    names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("dfzsl_fast::"))
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    keys = ("CPU", "CUDA", "CompositeExplicitAutograd", "CompositeImplicitAutograd", "Meta")
    out["ops"] = {n: [k for k in keys if has(n, k)] for n in names}
except Exception as exc:
    out["ops_error"] = f"{type(exc).__name__}: {exc}"
try:
    out["cuda_kernels_registered"] = bool(torch._C._dispatch_has_kernel_for_dispatch_key(
        "dfzsl_fast::vmf_sample", "CUDA"))
except Exception as exc:
    out["cuda_kernels_registered"] = None
smoke = {}
if torch.cuda.is_available():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(64, 512, generator=g).cuda()
    for backend in ("native", "triton", "torch"):
        try:
            x, y = dfzsl_fast.sample_vmf(mu, 100.0, 1000, backend=backend, seed=1)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            x, y = dfzsl_fast.sample_vmf(mu, 100.0, 1000, backend=backend, seed=2)
            torch.cuda.synchronize()
            ms = (time.perf_counter() - t0) * 1e3
            smoke[backend] = {"ok": True, "rows": int(x.shape[0]), "ms": round(ms, 3),
                              "max_norm_err": float((x.double().norm(dim=1) - 1).abs().max())}
        except Exception as exc:
            smoke[backend] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:800]}
out["smoke_vmf_cuda_64x1000x512"] = smoke
print("MARK" + json.dumps(out, default=str))
"""


# ----------------------------------------------------------------------------------- helpers
def _now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _tail_lines(path: str, n: int = 30, chars: int = 4000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-n:])[-chars:]


def _last_json(path: str) -> dict | None:
    """The JSON after the last MARK line a probe printed into its log."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = [ln for ln in fh if ln.startswith(MARK)]
    except OSError:
        return None
    if not lines:
        return None
    try:
        return json.loads(lines[-1][len(MARK):])
    except json.JSONDecodeError:
        return None


def _run(cmd: list[str], log: str, timeout: float, env: dict | None = None) -> dict:
    """Run cmd in its own process group, output appended to log; kill the group at timeout."""
    t0 = time.monotonic()
    with open(log, "ab") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n".encode())
        fh.flush()
        try:
            p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            fh.write(f"cannot start: {exc}\n".encode())
            return {"rc": None, "seconds": 0.0, "timed_out": False, "error": str(exc)}
        timed_out = False
        try:
            rc = p.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            timed_out = True
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    p.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            rc = p.poll()
            fh.write(f"\n[gpu_check] killed at its limit of {timeout:.0f} s\n".encode())
    return {"rc": rc, "seconds": round(time.monotonic() - t0, 2), "timed_out": timed_out}


def read_record(path: str) -> dict:
    """Counts, failures and skip reasons from a gpu_check_pytest JSON-lines record."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "xfailed": 0, "xpassed": 0,
              "skipped_budget": 0, "deselected": 0, "collected": None}
    failures: list[dict] = []
    reasons: dict[str, int] = {}
    ended = False
    exitstatus = None
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.readlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        ev = rec.get("event")
        if ev == "collection":
            counts["collected"] = rec.get("collected")
        elif ev == "deselected":
            counts["deselected"] += int(rec.get("count", 0))
        elif ev == "end":
            ended, exitstatus = True, rec.get("exitstatus")
        elif ev == "report":
            when, outcome = rec.get("when"), rec.get("outcome")
            if rec.get("xfail"):
                if outcome == "skipped":
                    counts["xfailed"] += 1
                elif when == "call":
                    counts["xpassed"] += 1
                continue
            if outcome == "failed":
                counts["failed" if when == "call" else "errors"] += 1
                failures.append({"id": rec.get("nodeid"), "when": when,
                                 "error_tail": rec.get("error", "")})
            elif outcome == "skipped":
                reason = rec.get("reason", "")
                if BUDGET_REASON in reason:
                    counts["skipped_budget"] += 1
                else:
                    counts["skipped"] += 1
                    reasons[reason] = reasons.get(reason, 0) + 1
            elif outcome == "passed" and when == "call":
                counts["passed"] += 1
    top = dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:10])
    ran = sum(counts[k] for k in ("passed", "failed", "skipped", "xfailed", "xpassed",
                                  "skipped_budget"))
    if not counts["collected"] and ran:  # under xdist the controller collects nothing
        counts["collected"] = None
    return {"tests": counts, "failures": failures, "skip_reasons": top, "session_ended": ended,
            "exitstatus": exitstatus}


def read_benchmarks(path: str) -> list[dict]:
    """The benchmark table (name, group, mean, stddev, median, min, ops, rounds) of a
    pytest-benchmark JSON file."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError):
        return []
    rows = []
    for b in data.get("benchmarks", []):
        st = b.get("stats", {}) or {}
        ex = b.get("extra_info", {}) or {}
        rows.append({
            "name": b.get("name"),
            "group": b.get("group"),
            "provider": ex.get("provider"),
            "mean_s": st.get("mean"),
            "stddev_s": st.get("stddev"),
            "median_s": st.get("median"),
            "min_s": st.get("min"),
            "ops": st.get("ops"),
            "rounds": st.get("rounds"),
            "samples_per_s": ex.get("samples/s"),
            "device": ex.get("device"),
        })
    return rows


def _fmt_s(x) -> str:
    if x is None:
        return "-"
    if x >= 1:
        return f"{x:.3f} s"
    if x >= 1e-3:
        return f"{x * 1e3:.3f} ms"
    return f"{x * 1e6:.1f} us"


# ------------------------------------------------------------------------------------ driver
class Check:
    def __init__(self, args):
        self.dry = args.dry_run
        self.out = os.path.abspath(args.out)
        self.logs = os.path.join(self.out, "logs")
        self.work = tempfile.mkdtemp(prefix="dfzsl_gpu_check_")
        self.site = os.environ.get("DFZSL_GPU_CHECK_SITE") or os.path.join(self.work, "site")
        self.total = float(args.total_s)
        self.budgets = dict(BUDGETS)
        for item in filter(None, (args.budget or "").split(",")):
            k, _, v = item.partition("=")
            if k.strip() in self.budgets and v.strip():
                self.budgets[k.strip()] = float(v)
        self.selected = set(PHASES) if not args.phases else {
            p.strip() for p in args.phases.split(",") if p.strip()}
        if _flag("DFZSL_GPU_CHECK_NO_REST") or os.environ.get("DFZSL_GPU_CHECK_REST") == "0":
            self.selected.discard("tests_rest")
        self.xdist = os.environ.get("DFZSL_GPU_CHECK_XDIST", "").strip() != "0"
        self.t0 = time.monotonic()
        self.deadline = self.t0 + self.total
        self.phases: list[dict] = []
        self.env_facts: dict = {}
        self.native: dict | None = None
        self.bench_rows: list[dict] = []
        self.synthesis: dict | None = None
        self.extra_path: list[str] = []
        self.build_ok = False

    # ------------------------------------------------------------------ bookkeeping
    def left(self) -> float:
        return self.deadline - time.monotonic()

    def log_path(self, phase: str) -> str:
        return os.path.join(self.work, f"{phase}.log")

    def env(self, **extra) -> dict:
        env = dict(os.environ)
        parts = [ROOT] + self.extra_path + [TOOLS]
        if env.get("PYTHONPATH"):
            parts.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(parts)
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("MPLBACKEND", "Agg")
        env["PYTHONUNBUFFERED"] = "1"
        # this Python's bin first: ninja, pip and friends of its environment
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        if self.dry:  # the same cheap run on any machine, a GPU one too
            env["CUDA_VISIBLE_DEVICES"] = ""
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def phase(self, name: str, fn) -> None:
        budget = self.budgets[name]
        rec = {"name": name, "status": "skipped", "seconds": 0.0, "budget_s": budget,
               "hit_budget": False}
        if name not in self.selected:
            rec["note"] = "not selected (--phases)"
        else:
            limit = min(budget, self.left() - 2)
            if limit < 5:
                rec["note"] = "no time left in the total budget"
                rec["hit_budget"] = True
            else:
                rec["limit_s"] = round(limit, 1)
                t0 = time.monotonic()
                try:
                    rec.update(fn(limit) or {})
                except Exception as exc:  # a bug here must not lose the other phases
                    rec["status"] = "error"
                    rec["note"] = f"gpu_check internal error: {type(exc).__name__}: {exc}"
                rec["seconds"] = round(time.monotonic() - t0, 2)
                if rec.get("timed_out"):
                    rec["hit_budget"] = True
        if os.path.exists(self.log_path(name)):
            rec["log"] = f"logs/gpu_check.log (section {name})"
        self.phases.append(rec)
        tests = rec.get("tests") or {}
        counts = ", ".join(f"{k} {v}" for k, v in tests.items() if v and k != "collected")
        print(f"[gpu_check] {name:12s} {rec['status']:9s} {rec['seconds']:7.1f} s "
              f"(budget {budget:.0f} s){' BUDGET HIT' if rec['hit_budget'] else ''}"
              f"{'  ' + counts if counts else ''}{'  ' + rec['note'] if rec.get('note') else ''}",
              flush=True)

    # ------------------------------------------------------------------ phases
    def do_wheels(self, limit: float) -> dict:
        from importlib import metadata

        wheels = sorted(glob.glob(os.path.join(ROOT, ".whl", "*.whl")))
        if not wheels:
            return {"status": "skipped", "note": "no .whl folder carried (tools/gpu_wheels.sh)"}
        present, missing = {}, []
        force = _flag("DFZSL_GPU_CHECK_FORCE_WHEELS")
        for w in wheels:
            dist = re.sub(r"[-_.]+", "-", os.path.basename(w).split("-")[0]).lower()
            try:
                present[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                present[dist] = None
            if force or present[dist] is None:
                missing.append(w)
        res = {"carried": sorted(present), "already_installed": {k: v for k, v in present.items()
                                                                   if v is not None},
               "installed": [os.path.basename(w) for w in missing], "site": self.site}
        if not missing:
            res["status"] = "passed"
            return res
        os.makedirs(self.site, exist_ok=True)
        log = self.log_path("wheels")
        run = {"rc": 1}
        if _has_module("pip"):
            run = _run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                        "--no-compile", "--no-cache-dir", "--upgrade", "--target", self.site,
                        *missing], log, limit)
        if run.get("rc") != 0:  # no pip, or it failed: a wheel is a zip of its install tree
            with open(log, "a") as fh:
                fh.write("[gpu_check] pip unavailable or failed: unzipping the wheels\n")
            for w in missing:
                with zipfile.ZipFile(w) as z:
                    z.extractall(self.site)
            res["method"] = "unzip"
        else:
            res["method"] = "pip --target"
        self.extra_path.append(self.site)
        res["status"] = "passed"
        res["rc"] = run.get("rc")
        return res

    def do_env(self, limit: float) -> dict:
        log = self.log_path("env")
        facts: dict = {"utc": _now_utc(), "host": platform.node(), "dry_run": self.dry}
        smi = shutil.which("nvidia-smi")
        if smi:
            q = ("name,driver_version,memory.total,compute_cap,clocks.max.sm,clocks.max.mem,"
                 "power.limit")
            try:
                r = subprocess.run([smi, f"--query-gpu={q}", "--format=csv,noheader"],
                                   capture_output=True, text=True, timeout=20)
                keys = q.split(",")
                facts["nvidia_smi"] = [
                    dict(zip(keys, [c.strip() for c in row.split(",")], strict=False))
                    for row in r.stdout.strip().splitlines() if row.strip()]
                r2 = subprocess.run([smi], capture_output=True, text=True, timeout=20)
                m = re.search(r"CUDA Version:\s*([\d.]+)", r2.stdout)
                facts["driver_cuda"] = m.group(1) if m else None
                with open(log, "a") as fh:
                    fh.write(r.stdout + r.stderr + r2.stdout + r2.stderr)
            except (OSError, subprocess.SubprocessError) as exc:
                facts["nvidia_smi_error"] = str(exc)
        else:
            facts["nvidia_smi"] = None
        nvcc = self.find_nvcc()
        facts["nvcc"] = nvcc
        facts["ninja"] = shutil.which("ninja", path=self.env()["PATH"])
        if nvcc:
            try:
                r = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=20)
                m = re.search(r"release ([\d.]+)", r.stdout)
                facts["nvcc_release"] = m.group(1) if m else None
                facts["cuda_home"] = os.path.dirname(os.path.dirname(nvcc))
            except (OSError, subprocess.SubprocessError) as exc:
                facts["nvcc_error"] = str(exc)
        code = ENV_PROBE.replace("MARK", MARK).replace(
            "for n in PACKAGES:", f"for n in {list(PACKAGES)!r}:")
        run = _run([sys.executable, "-c", code], log, limit, self.env())
        probe = _last_json(log) or {}
        facts.update(probe)
        facts["source_digest"] = self.source_digest()
        tc, nv = facts.get("torch_cuda"), facts.get("nvcc_release")
        if tc and nv and tc.split(".")[0] != nv.split(".")[0]:
            facts["warning"] = f"nvcc {nv} and torch's CUDA {tc} differ in major version"
        self.env_facts = facts
        ok = run.get("rc") == 0 and bool(probe)
        gpus = facts.get("gpus") or []
        dev = f"{gpus[0]['name']} (sm {gpus[0]['compute_capability']})" if gpus else "no GPU"
        note = (f"{dev}, torch {facts.get('torch')}, triton {facts.get('triton')}, "
                f"python {facts.get('python')}, nvcc {facts.get('nvcc_release')}")
        return {"status": "passed" if ok else "failed", "rc": run.get("rc"), "note": note,
                "timed_out": run.get("timed_out", False),
                **({} if ok else {"error_tail": _tail_lines(log)})}

    @staticmethod
    def find_nvcc() -> str | None:
        cands = []
        for key in ("CUDA_HOME", "CUDA_PATH"):
            if os.environ.get(key):
                cands.append(os.path.join(os.environ[key], "bin", "nvcc"))
        cands.append("/usr/local/cuda/bin/nvcc")
        w = shutil.which("nvcc")
        if w:
            cands.append(w)
        cands += sorted(glob.glob("/usr/local/cuda-*/bin/nvcc"), reverse=True)
        for c in cands:
            if os.path.isfile(c) and os.access(c, os.X_OK):
                return c
        return None

    @staticmethod
    def source_digest() -> str:
        h = hashlib.sha256()
        files = sorted(glob.glob(os.path.join(ROOT, "csrc", "**", "*"), recursive=True)
                       + glob.glob(os.path.join(ROOT, "dfzsl_fast", "**", "*.py"), recursive=True)
                       + [os.path.join(ROOT, "setup.py")])
        for f in files:
            if os.path.isfile(f):
                h.update(os.path.relpath(f, ROOT).encode())
                with open(f, "rb") as fh:
                    h.update(fh.read())
        return h.hexdigest()[:16]

    def existing_so(self) -> list[str]:
        return sorted(os.path.relpath(p, ROOT) for p in glob.glob(
            os.path.join(ROOT, "dfzsl_fast", "_C*.so")))

    def do_build(self, limit: float) -> dict:
        if self.dry:
            so = self.existing_so()
            self.build_ok = bool(so)
            return {"status": "skipped", "note": "dry run: no build; existing _C reused",
                    "existing": so}
        log = self.log_path("build")
        nvcc = self.env_facts.get("nvcc") or self.find_nvcc()
        extra = {"MAX_JOBS": os.environ.get("MAX_JOBS") or str(os.cpu_count() or 4)}
        if nvcc:
            extra["CUDA_HOME"] = os.path.dirname(os.path.dirname(nvcc))
            extra["FORCE_CUDA"] = "1"
        gpus = self.env_facts.get("gpus") or []
        if gpus and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            extra["TORCH_CUDA_ARCH_LIST"] = gpus[0]["compute_capability"]
        env = self.env(**extra)
        env["PATH"] = os.path.join(extra.get("CUDA_HOME", "/usr/local/cuda"), "bin") + \
            os.pathsep + env.get("PATH", "")
        for p in glob.glob(os.path.join(ROOT, "dfzsl_fast", "_C*.so")):
            os.remove(p)  # never test a stale module from an earlier run
        cmd = [sys.executable, "setup.py", "build_ext", "--inplace"]
        run = _run(cmd, log, limit, env)
        so = self.existing_so()
        self.build_ok = run.get("rc") == 0 and bool(so)
        res = {"rc": run.get("rc"), "timed_out": run.get("timed_out", False),
               "command": " ".join(f"{k}={v}" for k, v in extra.items()) + " " + shlex.join(cmd),
               "cuda": bool(nvcc), "built": so}
        if not nvcc:
            res["note"] = "no nvcc found: CPU-only build (CUDA tests will skip)"
        if self.build_ok:
            res["status"] = "passed"
        else:
            res["status"] = "timeout" if run.get("timed_out") else "failed"
            res["error_tail"] = self.build_errors(log)
        return res

    @staticmethod
    def build_errors(log: str) -> str:
        try:
            with open(log, encoding="utf-8", errors="replace") as fh:
                lines = fh.read().splitlines()
        except OSError:
            return ""
        errs = [ln for ln in lines if re.search(r"\berror\b|Error:|FAILED", ln)][:12]
        return ("\n".join(errs) + "\n...\n" + "\n".join(lines[-25:]))[-5000:]

    def do_native(self, limit: float) -> dict:
        log = self.log_path("native")
        run = _run([sys.executable, "-c", NATIVE_PROBE.replace("MARK", MARK)], log,
                   min(limit, 60), self.env())
        self.native = _last_json(log)
        res: dict = {"probe_rc": run.get("rc")}
        if self.native is None:
            res["probe_error_tail"] = _tail_lines(log)
        else:
            cfg = self.native.get("config", {})
            res["note"] = (f"native loaded: {cfg.get('native_loaded')}, CUDA kernels: "
                           f"{self.native.get('cuda_kernels_registered')}")
        if self.dry:  # tests/test_registration.py runs in the normal suite here
            res["status"] = "passed" if self.native is not None else "failed"
        else:
            left = limit - run.get("seconds", 0)
            pt = self.pytest_phase("native", ["tests/test_registration.py"], left)
            note = "; ".join(filter(None, (res.get("note"), pt.pop("note", None))))
            res.update(pt, note=note)
        if self.native is None and res.get("status") == "passed":
            res["status"] = "failed"
        smoke = (self.native or {}).get("smoke_vmf_cuda_64x1000x512") or {}
        bad = [b for b, v in smoke.items() if not v.get("ok")]
        if bad and res.get("status") == "passed":
            res["status"] = "failed"
            res["note"] = res.get("note", "") + f"; smoke failed: {', '.join(bad)}"
        return res

    def do_synth(self, limit: float) -> dict:
        log = self.log_path("synth")
        env = self.env(DFZSL_SYNTH_DEADLINE=f"{time.time() + limit - 8:.1f}",
                       DFZSL_SYNTH_DRY="1" if self.dry else "0")
        if self.dry:
            env["TRITON_INTERPRET"] = "1"
        run = _run([sys.executable, os.path.join(TOOLS, "gpu_check_synth.py")], log, limit, env)
        self.synthesis = _last_json(log)
        res: dict = {"rc": run.get("rc"), "timed_out": run.get("timed_out", False)}
        syn = self.synthesis or {}
        ok = bool(syn.get("ok")) and run.get("rc") == 0
        res["status"] = "passed" if ok else ("timeout" if run.get("timed_out") else "failed")
        tp = syn.get("throughput") or {}
        res["note"] = "; ".join(
            f"{k}: {v['rows_per_s'] / 1e6:.2f} M rows/s, {v['pct_of_bf16_peak']:.1f}% of peak"
            for k, v in tp.items() if isinstance(v, dict) and "rows_per_s" in v)[:600]
        if not ok:
            res["error_tail"] = _tail_lines(log)
        return res

    def pytest_phase(self, name: str, args: list[str], limit: float, workers: int = 0,
                     extra_env: dict | None = None, collect_only: bool = False) -> dict:
        log = self.log_path(name)
        record = os.path.join(self.work, f"{name}.jsonl")
        open(record, "w").close()
        grace = min(GRACE_S, max(2.0, 0.2 * limit))
        env = self.env(DFZSL_GPU_CHECK_RECORD=record,
                       DFZSL_GPU_CHECK_DEADLINE=f"{time.time() + limit - grace:.1f}",
                       **(extra_env or {}))
        if self.native and self.native.get("config", {}).get("native_loaded"):
            env["DFZSL_REQUIRE_NATIVE"] = "1"
        cmd = [sys.executable, "-m", "pytest", *args, "-p", "gpu_check_pytest",
               "-p", "no:cacheprovider", "-q", "-rfE", "--tb=short", "--color=no",
               "--continue-on-collection-errors"]
        if collect_only:
            cmd.append("--collect-only")
        else:
            if _has_module("pytest_timeout"):
                cmd.append(f"--timeout={int(min(PER_TEST_TIMEOUT_S, limit))}")
            if workers > 0 and self.xdist and _has_module("xdist"):
                cmd += ["-n", str(workers)]
                # share the cores between the workers (each would take them all)
                env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // workers)))
        run = _run(cmd, log, limit, env)
        rec = read_record(record)
        t = rec["tests"]
        res = {"rc": run.get("rc"), "timed_out": run.get("timed_out", False),
               "command": "pytest " + shlex.join(cmd[3:]), **rec}
        if t["skipped_budget"]:
            res["hit_budget"] = True
        if run.get("timed_out") and rec["session_ended"]:
            res["note"] = "killed at its limit after the pytest session had ended (slow exit)"
        if run.get("timed_out") and not rec["session_ended"]:
            res["status"] = "timeout"
        elif t["failed"] or t["errors"]:
            res["status"] = "failed"
        elif collect_only and run.get("rc") == 0:
            res["status"] = "collected"
        elif t["skipped_budget"]:
            res["status"] = "budget"
        elif run.get("rc") == 5:
            res["status"] = "no_tests"
        elif run.get("rc") == 0 or (run.get("timed_out") and rec["exitstatus"] == 0):
            res["status"] = "passed"
        else:
            res["status"] = "error"
            res["error_tail"] = _tail_lines(log)
        return res

    @staticmethod
    def test_targets(marker: str) -> list[str]:
        """The test files that name the marker (or have it in their name): quicker to collect
        than tests/, and a module that fails to import elsewhere cannot stop these phases (it
        shows in tests_rest). Set DFZSL_GPU_CHECK_ALL_FILES=1 to collect all of tests/."""
        if _flag("DFZSL_GPU_CHECK_ALL_FILES"):
            return ["tests"]
        files = []
        for f in sorted(glob.glob(os.path.join(ROOT, "tests", "**", "test_*.py"), recursive=True)):
            with open(f, encoding="utf-8", errors="replace") as fh:
                if f"mark.{marker}" in fh.read() or marker in os.path.basename(f):
                    files.append(os.path.relpath(f, ROOT))
        return files or ["tests"]

    def do_tests_cuda(self, limit: float) -> dict:
        return self.pytest_phase("tests_cuda", [*self.test_targets("cuda"), "-m", "cuda"], limit,
                                 workers=int(os.environ.get("DFZSL_GPU_CHECK_CUDA_WORKERS", 4)))

    def do_tests_triton(self, limit: float) -> dict:
        return self.pytest_phase("tests_triton", [*self.test_targets("triton"), "-m", "triton"],
                                 limit,
                                 workers=int(os.environ.get("DFZSL_GPU_CHECK_TRITON_WORKERS", 4)),
                                 collect_only=self.dry)

    def do_bench(self, limit: float) -> dict:
        if not _has_module("pytest_benchmark"):
            return {"status": "skipped", "note": "pytest-benchmark is not installed"}
        out_json = os.path.join(self.work, "benchmarks.json")
        common = ["--benchmark-only", f"--benchmark-json={out_json}",
                  "--benchmark-min-time=0.01", "--benchmark-max-time=0.5",
                  "--benchmark-columns=mean,stddev,median,ops,rounds", "--benchmark-sort=name"]
        if self.dry:  # one tiny CPU case (smoke size), to exercise the benchmark table
            args = ["benchmarks/bench_cosine.py", "-m", "not cuda",
                    "-k", "cpu and C200 and dfzsl and forward", *common]
            env = {"DFZSL_BENCH_SMOKE": "1"}
        else:
            sel = os.environ.get("DFZSL_GPU_CHECK_BENCH_K", "not torch_compile")
            args = [*BENCH_FILES, "-m", "cuda", "-k", sel, *common]
            env = {"DFZSL_BENCH_ROUNDS": os.environ.get("DFZSL_BENCH_ROUNDS", "5")}
        res = self.pytest_phase("bench", args, limit, extra_env=env)
        self.bench_rows = read_benchmarks(out_json)
        res["benchmarks"] = len(self.bench_rows)
        if os.path.exists(out_json):
            shutil.copy(out_json, os.path.join(self.logs, "benchmarks.json"))
        return res

    def do_tests_rest(self, limit: float) -> dict:
        if self.dry:
            return {"status": "skipped", "note": "dry run: the rest of the suite is CI's job here"}
        workers = int(os.environ.get("DFZSL_GPU_CHECK_REST_WORKERS",
                                     max(0, min(8, (os.cpu_count() or 2) // 2))))
        args = ["tests", "-m", "not cuda and not triton and not slow",
                "--ignore=tests/test_gpu_check.py"]  # no dry run inside the real one
        if workers > 0 and self.xdist and _has_module("xdist"):
            args += ["--dist", "loadfile"]
        return self.pytest_phase("tests_rest", args, limit, workers=workers)

    # ------------------------------------------------------------------ report
    def write(self) -> dict:
        essential = ("build", "native", "synth", "tests_cuda", "tests_triton", "bench")
        bad = [p["name"] for p in self.phases if p["status"] in ("failed", "timeout", "error")]
        # on a GPU every essential phase must have run (a dry run skips some by design)
        incomplete = [] if self.dry else [
            p["name"] for p in self.phases
            if p["name"] in essential and p["status"] in ("skipped", "no_tests")]
        hit = [p["name"] for p in self.phases if p.get("hit_budget")]
        gpus = self.env_facts.get("gpus") or []
        cuda_k = (self.native or {}).get("cuda_kernels_registered")
        totals = {k: 0 for k in ("passed", "failed", "errors", "skipped", "skipped_budget",
                                 "xfailed", "xpassed")}
        failed_ids = []
        for p in self.phases:
            for k in totals:
                totals[k] += int((p.get("tests") or {}).get(k) or 0)
            failed_ids += [f["id"] for f in p.get("failures", [])]
        seconds = round(time.monotonic() - self.t0, 1)
        verdict = {
            "ok": not bad and not incomplete and (self.dry or (bool(gpus) and bool(cuda_k))),
            "failed_phases": bad,
            "incomplete_phases": incomplete,
            "budget_hit_phases": hit,
            "gpu_visible": bool(gpus),
            "cuda_kernels_registered": cuda_k,
            "essential_phases": list(essential),
        }
        report = {
            "schema": SCHEMA,
            "dry_run": self.dry,
            "started_utc": self.started,
            "finished_utc": _now_utc(),
            "seconds": seconds,
            "total_budget_s": self.total,
            "over_total_budget": seconds > self.total,
            "verdict": verdict,
            "tests": totals,
            "failed_test_ids": failed_ids,
            "environment": self.env_facts,
            "native": self.native,
            "phases": self.phases,
            "benchmarks": self.bench_rows,
            "synthesis": self.synthesis,
            "files": {"log": "logs/gpu_check.log", "benchmarks_json": "logs/benchmarks.json"},
        }
        self.write_logs(report)
        with open(os.path.join(self.out, "gpu_check.json"), "w") as fh:
            json.dump(report, fh, indent=1, default=str)
        return report

    def write_logs(self, report: dict) -> None:
        capped = False
        with open(os.path.join(self.logs, "gpu_check.log"), "wb") as out:
            for name in PHASES:
                path = self.log_path(name)
                if not os.path.exists(path):
                    continue
                size = os.path.getsize(path)
                out.write(f"\n======== {name} ({size} bytes) ========\n".encode())
                with open(path, "rb") as fh:
                    if size > LOG_CAP:
                        capped = True
                        fh.seek(size - LOG_CAP)
                        out.write(f"[... first {size - LOG_CAP} bytes cut; full log in "
                                  "raw_logs.tar.gz ...]\n".encode())
                    shutil.copyfileobj(fh, out)
        if capped:
            with tarfile.open(os.path.join(self.logs, "raw_logs.tar.gz"), "w:gz") as tar:
                for name in PHASES:
                    for ext in (".log", ".jsonl"):
                        p = os.path.join(self.work, name + ext)
                        if os.path.exists(p):
                            tar.add(p, arcname=name + ext)
            report["files"]["raw_logs"] = "logs/raw_logs.tar.gz"

    def summary(self, report: dict) -> None:
        v = report["verdict"]
        print("\n==================== gpu_check summary ====================")
        env = report["environment"]
        gpus = env.get("gpus") or []
        print(f"device: {gpus[0]['name'] if gpus else 'no GPU'}; torch {env.get('torch')} "
              f"(CUDA {env.get('torch_cuda')}), triton {env.get('triton')}, python "
              f"{env.get('python')}, nvcc {env.get('nvcc_release')}, driver "
              f"{(env.get('nvidia_smi') or [{}])[0].get('driver_version')}")
        print(f"{'phase':13s} {'status':9s} {'seconds':>8s} {'budget':>7s}  tests")
        for p in report["phases"]:
            t = p.get("tests") or {}
            tt = " ".join(f"{k}={v}" for k, v in t.items() if v and k != "collected")
            if p["status"] == "collected":
                tt = f"collected={t.get('collected')}"
            print(f"{p['name']:13s} {p['status']:9s} {p['seconds']:8.1f} {p['budget_s']:7.0f}"
                  f"{'!' if p.get('hit_budget') else ' '} {tt}")
        shown = 0
        for p in report["phases"]:
            for f in p.get("failures", []):
                shown += 1
                if shown <= 25:
                    last = (f.get("error_tail") or "").strip().splitlines()[-1:] or [""]
                    print(f"FAIL {f['id']} ({f['when']}): {last[0][:200]}")
            if p.get("error_tail") and p["status"] in ("failed", "timeout", "error"):
                print(f"--- {p['name']} error tail ---\n{p['error_tail'][-1500:]}")
        if shown > 25:
            print(f"... {shown - 25} more failures in gpu_check.json (failed_test_ids)")
        rows = report["benchmarks"]
        if rows:
            print(f"\n{'benchmark':60s} {'mean':>11s} {'stddev':>11s} {'ops/s':>10s}")
            for r in rows:
                print(f"{(r['name'] or '')[:60]:60s} {_fmt_s(r['mean_s']):>11s} "
                      f"{_fmt_s(r['stddev_s']):>11s} {r['ops'] or 0:10.2f}")
        syn = report.get("synthesis") or {}
        if syn:
            print(f"\nsynthesis on {syn.get('device')} (ok: {syn.get('ok')})")
            for k, c in (syn.get("correctness") or {}).items():
                print(f"  correctness {k:16s} max row err {c.get('max_row_err_u')} u "
                      f"(allowed {c.get('allowed_u')}) {c.get('error', '')[:200]}")
            for k, t in (syn.get("throughput") or {}).items():
                if "rows_per_s" in t:
                    print(f"  throughput  {k:16s} {t['rows_per_s'] / 1e6:9.3f} M rows/s "
                          f"{t['tflops']:8.1f} TFLOP/s {t['pct_of_bf16_peak']:6.1f}% of peak "
                          f"({t['rows']} rows, {t['seconds_median']:.4f} s)")
                else:
                    print(f"  throughput  {k:16s} {t}"[:300])
        print(f"\nverdict: {'OK' if v['ok'] else 'NOT OK'}; failed phases: "
              f"{', '.join(v['failed_phases']) or 'none'}; not run: "
              f"{', '.join(v['incomplete_phases']) or 'none'}; budget hit: "
              f"{', '.join(v['budget_hit_phases']) or 'none'}; total {report['seconds']} s "
              f"of {report['total_budget_s']:.0f}")
        print(f"results: {os.path.join(self.out, 'gpu_check.json')}")

    def main(self) -> int:
        self.started = _now_utc()
        os.makedirs(self.out, exist_ok=True)
        if os.path.isdir(self.logs):
            shutil.rmtree(self.logs)
        os.makedirs(self.logs)
        print(f"[gpu_check] {'DRY RUN ' if self.dry else ''}python {sys.executable}, "
              f"out {self.out}, total budget {self.total:.0f} s", flush=True)
        try:
            for name in PHASES:
                self.phase(name, getattr(self, "do_" + name))
        finally:
            report = self.write()
            self.summary(report)
            shutil.rmtree(self.work, ignore_errors=True)
        return 0 if report["verdict"]["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", default=_flag("DFZSL_GPU_CHECK_DRY"),
                    help="cheap run on a machine without a GPU (also DFZSL_GPU_CHECK_DRY=1)")
    ap.add_argument("--out", default=os.environ.get("OUT") or os.path.join(ROOT, "gpu_check_out"),
                    help="results folder (default $OUT, else ./gpu_check_out)")
    ap.add_argument("--phases", default=os.environ.get("DFZSL_GPU_CHECK_PHASES", ""),
                    help=f"comma-separated subset of {','.join(PHASES)} (default all)")
    ap.add_argument("--total-s", type=float,
                    default=float(os.environ.get("DFZSL_GPU_CHECK_TOTAL_S", TOTAL_S)),
                    help=f"total time budget in seconds (default {TOTAL_S})")
    ap.add_argument("--budget", default=os.environ.get("DFZSL_GPU_CHECK_BUDGET", ""),
                    help="per-phase budgets, e.g. build=200,bench=120")
    args = ap.parse_args(argv)
    return Check(args).main()


if __name__ == "__main__":
    sys.exit(main())
