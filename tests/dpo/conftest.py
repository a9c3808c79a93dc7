"""tests/dpo: one intra-op thread per test (toy-sized ops run faster without threading, and the
shared CI / dev CPUs are not oversubscribed); the previous setting is restored afterwards."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
