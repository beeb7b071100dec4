"""The prepared GPU check (tools/gpu_check.sh, issue 9) without a GPU.

The dry run executes every phase in its cheap form (no build, CUDA tests skipping, Triton tests
collected, one small CPU benchmark) and must write a well-formed gpu_check.json; its parts (the
pytest plugin's record, the budget cut-off, the benchmark table) are checked on small inputs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "tools"

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("DFZSL_GPU_CHECK_RECORD")), reason="inside a GPU check run"
)


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", TOOLS / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


gpu_check = _load()
STATUSES = {"passed", "failed", "timeout", "budget", "skipped", "no_tests", "error", "collected"}


def _pytest_with_plugin(tmp_path: Path, deadline: float | None = None) -> dict:
    (tmp_path / "test_sample.py").write_text(
        textwrap.dedent(
            """
            import pytest

            def test_ok():
                pass

            def test_bad():
                assert 1 + 1 == 3, "arithmetic"

            @pytest.mark.skip(reason="not here")
            def test_skip():
                pass

            @pytest.mark.xfail(reason="known")
            def test_xfail():
                assert False
            """
        )
    )
    record = tmp_path / "record.jsonl"
    env = dict(os.environ, PYTHONPATH=str(TOOLS), DFZSL_GPU_CHECK_RECORD=str(record))
    if deadline is not None:
        env["DFZSL_GPU_CHECK_DEADLINE"] = str(deadline)
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "gpu_check_pytest", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), str(tmp_path / "test_sample.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    return gpu_check.read_record(str(record))


def test_plugin_record_counts_and_failures(tmp_path):
    rec = _pytest_with_plugin(tmp_path)
    t = rec["tests"]
    assert (t["passed"], t["failed"], t["skipped"], t["xfailed"]) == (1, 1, 1, 1)
    assert t["collected"] == 4 and t["skipped_budget"] == 0
    assert rec["session_ended"] and rec["exitstatus"] == 1
    (fail,) = rec["failures"]
    assert fail["id"].endswith("test_sample.py::test_bad") and fail["when"] == "call"
    assert "arithmetic" in fail["error_tail"]
    assert rec["skip_reasons"] == {"not here": 1}


def test_plugin_budget_skips_the_rest(tmp_path):
    rec = _pytest_with_plugin(tmp_path, deadline=1.0)  # long past
    t = rec["tests"]
    assert t["skipped_budget"] == 4 and t["passed"] == t["failed"] == 0


def test_read_benchmarks(tmp_path):
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"benchmarks": [{
        "name": "test_x[cuda-a]", "group": "g",
        "stats": {"mean": 0.5, "stddev": 0.1, "median": 0.4, "min": 0.3, "ops": 2.0, "rounds": 5},
        "extra_info": {"provider": "native", "samples/s": 1e6},
    }]}))
    (row,) = gpu_check.read_benchmarks(str(path))
    assert row["name"] == "test_x[cuda-a]" and row["mean_s"] == 0.5 and row["ops"] == 2.0
    assert row["samples_per_s"] == 1e6 and row["rounds"] == 5
    assert gpu_check.read_benchmarks(str(tmp_path / "missing.json")) == []


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is missing")
def test_dry_run_writes_well_formed_json(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), DFZSL_GPU_CHECK_PYTHON=sys.executable)
    env.pop("DFZSL_GPU_CHECK_PHASES", None)
    r = subprocess.run(
        ["bash", str(TOOLS / "gpu_check.sh"), "--dry-run"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    report = json.loads((out / "gpu_check.json").read_text())
    assert r.returncode == (0 if report["verdict"]["ok"] else 1), r.stdout[-3000:] + r.stderr
    assert "gpu_check summary" in r.stdout

    assert report["schema"] == gpu_check.SCHEMA and report["dry_run"] is True
    assert isinstance(report["seconds"], (int, float)) and not report["over_total_budget"]
    names = [p["name"] for p in report["phases"]]
    assert names == list(gpu_check.PHASES)
    for p in report["phases"]:
        assert p["status"] in STATUSES, p
        assert isinstance(p["seconds"], (int, float)) and p["budget_s"] > 0
        assert isinstance(p["hit_budget"], bool)
    by = {p["name"]: p for p in report["phases"]}
    assert by["build"]["status"] == "skipped" and by["tests_rest"]["status"] == "skipped"
    assert by["env"]["status"] == "passed"
    assert by["tests_cuda"]["tests"]["passed"] == 0  # CUDA hidden in a dry run: all skip
    assert by["tests_cuda"]["tests"]["skipped"] > 0
    assert by["tests_triton"]["status"] == "collected"
    # synth: tiny shapes under the Triton interpreter, against the float64 reference
    syn = report["synthesis"]
    assert by["synth"]["status"] == "passed" and syn["ok"] is True and syn["dry_run"] is True
    assert set(syn["correctness"]) == {"triton/base", "triton/wide"}
    for c in syn["correctness"].values():
        assert c["ok"] and c["max_row_err_u"] <= c["allowed_u"]
    for t in syn["throughput"].values():
        assert t["rows_per_s"] > 0 and t["flops_per_row"] > 0 and "pct_of_bf16_peak" in t
    assert by["tests_triton"]["tests"]["collected"] > 0

    env_facts = report["environment"]
    for key in ("python", "torch", "triton", "gpus", "nvcc", "packages", "source_digest"):
        assert key in env_facts
    assert env_facts["gpus"] == []
    assert report["verdict"]["gpu_visible"] is False
    assert set(report["tests"]) >= {"passed", "failed", "skipped", "skipped_budget"}
    assert isinstance(report["failed_test_ids"], list)

    if report["native"] is not None:  # _C may be absent where this runs
        assert "config" in report["native"] and "ops" in report["native"]
    assert by["bench"]["status"] in ("passed", "failed", "no_tests")
    for row in report["benchmarks"]:
        assert {"name", "mean_s", "stddev_s", "ops"} <= set(row)
    assert (out / "logs" / "gpu_check.log").is_file()
    assert len([p for p in out.rglob("*") if p.is_file()]) <= 8  # what the device tool returns
