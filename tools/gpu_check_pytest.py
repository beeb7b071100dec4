"""pytest plugin of tools/gpu_check.py (loaded with `-p gpu_check_pytest`, tools/ on PYTHONPATH).

- Writes one JSON line per test report, as each test finishes, to $DFZSL_GPU_CHECK_RECORD (plus
  a "collection" and an "end" event), so a phase killed at its time limit still has its counts.
  Under pytest-xdist only the controller writes (it receives every worker's reports).
- After $DFZSL_GPU_CHECK_DEADLINE (seconds since the epoch) every test not yet started is
  skipped with BUDGET_REASON, so a phase that runs out of budget ends cleanly (and
  pytest-benchmark still writes its JSON) instead of being killed.

Standard library and pytest only: the GPU machine's pytest may be older than ours.
"""

from __future__ import annotations

import json
import os
import time

import pytest

BUDGET_REASON = "gpu_check: phase budget reached"
TAIL_LINES = 15
TAIL_CHARS = 2500

_fh = None


def _deadline() -> float:
    try:
        return float(os.environ.get("DFZSL_GPU_CHECK_DEADLINE", "") or 0)
    except ValueError:
        return 0.0


def _write(obj: dict) -> None:
    if _fh is not None:
        _fh.write(json.dumps(obj) + "\n")
        _fh.flush()


def pytest_configure(config):
    global _fh
    path = os.environ.get("DFZSL_GPU_CHECK_RECORD")
    if path and not hasattr(config, "workerinput"):  # xdist workers: the controller records
        _fh = open(path, "a", encoding="utf-8")


def pytest_collection_finish(session):
    if not hasattr(session.config, "workerinput"):
        _write({"event": "collection", "collected": len(session.items)})


def pytest_collectreport(report):
    if report.failed:
        try:
            err = _tail(report.longreprtext)
        except Exception as exc:  # pragma: no cover
            err = f"(no traceback: {exc!r})"
        _write({"event": "report", "nodeid": report.nodeid or "(collection)", "when": "collect",
                "outcome": "failed", "duration": 0.0, "error": err})


def pytest_deselected(items):
    _write({"event": "deselected", "count": len(items)})


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    deadline = _deadline()
    if deadline and time.time() > deadline:
        pytest.skip(BUDGET_REASON)


def _tail(text: str) -> str:
    lines = text.rstrip().splitlines()[-TAIL_LINES:]
    return "\n".join(lines)[-TAIL_CHARS:]


def pytest_runtest_logreport(report):
    if _fh is None:
        return
    rec = {
        "event": "report",
        "nodeid": report.nodeid,
        "when": report.when,
        "outcome": report.outcome,
        "duration": round(float(getattr(report, "duration", 0.0) or 0.0), 4),
    }
    if hasattr(report, "wasxfail"):
        rec["xfail"] = True
    if report.skipped and isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        reason = str(report.longrepr[2])
        rec["reason"] = reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason
    elif report.failed:
        try:
            rec["error"] = _tail(report.longreprtext)
        except Exception as exc:  # pragma: no cover - defensive: never break the run
            rec["error"] = f"(no traceback: {exc!r})"
    _write(rec)


def pytest_sessionfinish(session, exitstatus):
    if not hasattr(session.config, "workerinput"):
        _write({"event": "end", "exitstatus": int(exitstatus)})


def pytest_unconfigure(config):
    global _fh
    if _fh is not None:
        _fh.close()
        _fh = None
