"""The op exists with or without the native extension; kernels match what _C says it has."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

import dfzsl_fast
from dfzsl_fast import _extension, testing


def test_native_kernels_registered_as_promised():
    if not _extension.native_available():
        if testing.require_native():
            raise AssertionError(
                f"native extension required but not loaded: {_extension.load_error}"
            )
        return
    info = _extension.build_info()
    for op in info["cpu_kernels"]:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"dfzsl_fast::{op}", "CPU"), op
    has_cuda_kernel = torch._C._dispatch_has_kernel_for_dispatch_key(
        "dfzsl_fast::vmf_sample", "CUDA"
    )
    assert has_cuda_kernel == bool(info["with_cuda"])
    assert info["torch_version"].split(".")[:2] == torch.__version__.split(".")[:2]


def _run(code: str, **env) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=300
    )


def test_import_and_sampling_without_extension():
    code = (
        "import torch, dfzsl_fast\n"
        "from dfzsl_fast import _extension\n"
        "assert not _extension.native_available(), 'extension should be disabled'\n"
        "x, y = dfzsl_fast.sample_vmf(torch.randn(3, 16), 50.0, n_per_class=10, seed=0)\n"
        "assert x.shape == (30, 16)\n"
        "try:\n"
        "    dfzsl_fast.sample_vmf(torch.randn(3, 16), 50.0, n_per_class=1, backend='native')\n"
        "    raise SystemExit('expected ValueError')\n"
        "except ValueError as e:\n"
        "    assert 'native extension not loaded (disabled by DFZSL_DISABLE_EXT)' in str(e), e\n"
        "print('ok')\n"
    )
    r = _run(code, DFZSL_DISABLE_EXT="1")
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_show_config_reports_backends():
    r = _run("import dfzsl_fast.__main__")
    assert r.returncode == 0, r.stderr
    assert "torch" in r.stdout and "backends" in r.stdout and "native" in r.stdout
    r = _run("import dfzsl_fast.__main__", DFZSL_DISABLE_EXT="1")
    assert "NOT loaded (disabled by DFZSL_DISABLE_EXT)" in r.stdout


def test_backend_env_and_context():
    mu = torch.randn(2, 4)
    with dfzsl_fast.use_backend("torch"):
        a, _ = dfzsl_fast.sample_vmf(mu, 1.0, n_per_class=3, seed=1)
    b, _ = dfzsl_fast.sample_vmf(mu, 1.0, n_per_class=3, seed=1, backend="torch")
    assert torch.equal(a, b)
    r = _run(
        "import torch, dfzsl_fast\n"
        "try:\n"
        "    dfzsl_fast.sample_vmf(torch.randn(2, 4), 1.0, n_per_class=1)\n"
        "except ValueError as e:\n"
        "    print(e)\n",
        DFZSL_BACKEND="bogus",
    )
    assert "DFZSL_BACKEND: backend must be one of" in r.stdout


def test_cli_sample_runs_and_checks(tmp_path):
    out = tmp_path / "s.pt"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "dfzsl_fast",
            "sample",
            "--classes",
            "5",
            "--per-class",
            "200",
            "--dim",
            "32",
            "--kappa",
            "50",
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "PASS" in r.stdout and out.exists() and not (tmp_path / "s.pt.partial").exists()
    saved = torch.load(out)
    assert saved["samples"].shape == (1000, 32)
