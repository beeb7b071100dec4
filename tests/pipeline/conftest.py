"""Pipeline tests: tiny synthetic worlds (see _world.py), no downloads, one intra-op thread."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # These tests use tiny shapes, where intra-op threads only add overhead (and contention on
    # shared 2-core machines); restore the setting afterwards.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
