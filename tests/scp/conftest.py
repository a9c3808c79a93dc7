"""SCP test set-up."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Small tensors on a shared 2-core CPU run several times faster single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
