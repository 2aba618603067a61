import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # small tensors: one thread keeps tests fast and bitwise reproducible
    torch.set_num_threads(1)
    yield


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    # corpora prepared by tests are cached under pytest's temp root, never in ~/.cache
    monkeypatch.setenv("RNNKIT_CACHE", str(tmp_path_factory.getbasetemp() / "rnnkit-cache"))
