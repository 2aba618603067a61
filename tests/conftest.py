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


LONGEST_FIRST = ("test_readme.py", "test_book_editions.py", "test_distributed.py",
                 "test_notebooks.py")


def pytest_collection_modifyitems(items):
    """The longest files first: with two workers (pyproject's addopts) the README check's three
    minutes overlap the rest of the suite instead of ending it."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
