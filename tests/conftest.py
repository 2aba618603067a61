import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_threads(monkeypatch):
    # small tensors: one thread keeps tests fast and bitwise reproducible; the processes tests
    # start (rnnkit commands, Jupyter kernels) get one too — two threads a process on two
    # shared cores wait on each other at every small GEMM and run many times slower
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    # corpora prepared by tests are cached under pytest's temp root, never in ~/.cache
    monkeypatch.setenv("RNNKIT_CACHE", str(tmp_path_factory.getbasetemp() / "rnnkit-cache"))
