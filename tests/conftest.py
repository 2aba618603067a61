import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # small tensors: one thread keeps tests fast and bitwise reproducible
    torch.set_num_threads(1)
    yield
