import os

import torch

# Triton reads TRITON_INTERPRET when kernels are decorated: set it before dfzsl_fast is imported
# so that Triton kernels run (slowly) on the CPU of GPU-less machines.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_everything():
    import random

    import numpy as np

    torch.manual_seed(1234)
    np.random.seed(1234)
    random.seed(1234)
    yield


@pytest.fixture()
def one_thread():
    """One intra-op thread for small problems (extra threads only add contention on the shared
    2-core machines); the setting is restored afterwards. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
