"""Notebooks run in real Jupyter kernels two at a time: each kernel runs one thread and spends
most of its few seconds starting, so two keep both cores busy and take half the time."""
import asyncio
from typing import Awaitable, Callable, Hashable

import pytest


def selected(request, tests: dict[str, Callable[[dict], Hashable]]) -> list[Hashable]:
    """The keys of the selected tests among `tests` (test name → its key from its params)."""
    return [tests[item.originalname](getattr(item, "callspec", None) and item.callspec.params)
            for item in request.session.items if item.originalname in tests]


def run_two_at_a_time(jobs: dict[Hashable, Callable[[], Awaitable]]) -> dict[Hashable, object]:
    """Each job's result, or the exception it raised (for its own test to raise again)."""
    kernels = asyncio.Semaphore(2)

    async def one(job):
        async with kernels:
            try:
                return await job()
            except Exception as e:
                return e

    async def every():
        return await asyncio.gather(*(one(job) for job in jobs.values()))

    with pytest.MonkeyPatch.context() as env:   # conftest's per-test setting comes too late
        env.setenv("OMP_NUM_THREADS", "1")      # for a module's fixture
        return dict(zip(jobs, asyncio.run(every())))


def result(results: dict, key: Hashable):
    out = results[key]
    if isinstance(out, Exception):
        raise out
    return out
