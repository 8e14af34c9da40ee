"""regress tests: one torch thread. Bag-sized matmuls gain nothing from a second thread, and on a shared 2-core
machine OpenMP's spinning threads make them much slower when another process holds a core."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
