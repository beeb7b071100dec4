import os

import torch

# Triton reads TRITON_INTERPRET when kernels are decorated: set it before dfzsl_fast is imported
# so that Triton kernels run (slowly) on the CPU of GPU-less machines.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

try:  # property-based tests (tests/fuzz); bounded so that the suite stays fast on 2 cores
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "ci", max_examples=40, deadline=None, derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    settings.register_profile(
        "fuzz", max_examples=2000, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    settings.load_profile(os.environ.get("DFZSL_HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # pragma: no cover - the fuzz tests skip without hypothesis
    pass


@pytest.fixture(autouse=True)
def _seed_everything():
    import random

    import numpy as np

    torch.manual_seed(1234)
    np.random.seed(1234)
    random.seed(1234)
    yield


@pytest.fixture(scope="module")
def cwd_in_tmp(tmp_path_factory):
    """A module run in a temporary working folder: commands without --out write
    runs/<command>-<time>/ under the current folder; keep that out of the repository. Use with
    ``pytestmark = pytest.mark.usefixtures("cwd_in_tmp")``."""
    import os

    old = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(old)


@pytest.fixture()
def one_thread():
    """One intra-op thread for small problems (extra threads only add contention on the shared
    2-core machines); the setting is restored afterwards. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
