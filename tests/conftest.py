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
