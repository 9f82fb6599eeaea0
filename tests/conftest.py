"""Shared test settings."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Run the suite on one intra-op thread. The tests use small tensors, for which a second OpenMP thread
    adds synchronisation rather than speed, and on a busy 2-core machine an op waits for its second thread's
    time slice (measured: several test files 5-10x slower with 2 threads). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
