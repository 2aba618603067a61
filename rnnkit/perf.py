"""Process settings measured to suit small-CPU work (see `rnnkit bench`), applied by the CLI.

glibc returns every freed block above 128 KiB to the kernel, so each (T, B, H) buffer of a
training step comes back as fresh pages that fault on first touch; keeping freed memory in
the heap removes that cost. Nothing here changes results.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator
from contextlib import contextmanager

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(limit_bytes: int = 256 << 20) -> bool:
    """Ask glibc malloc to reuse blocks up to `limit_bytes` instead of unmapping them."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False  # not glibc: nothing to tune
    ok = mallopt(_M_MMAP_THRESHOLD, min(limit_bytes, 32 << 20))
    ok &= mallopt(_M_TRIM_THRESHOLD, limit_bytes)
    return bool(ok)


SMALL_ROWS = 32   # rows a step may have and still run fastest on one thread


def threads_for(rows: int) -> int:
    """Torch threads for steps of `rows` rows (streams, beams): one for up to SMALL_ROWS. Such
    steps are small GEMMs: on an idle 2-core machine two threads gain 20-50% for one stream
    (nothing for beam 8 or 16 streams, 4% at 64), but lose 2-3x as soon as another process
    holds a core (one stream: 6,410 vs 2,935 chars/s; `rnnkit bench` measures both cases) —
    one thread is the choice that cannot collapse."""
    import torch
    return 1 if rows <= SMALL_ROWS else torch.get_num_threads()


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch on `n` threads inside the block, as many as before after it."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def training_threads(impl: str, cell: str = "rnn") -> int:
    """Torch threads for training: all, except where fastloop.c's own two threads run the
    products — `--impl compiled`, and minGRU/minLSTM on the CPU (`minrnn.compiled_training`):
    torch's OpenMP workers spin-wait after each of its ops and take the core those need (a
    chapter batch 16.4 ms with two torch threads, 12.8 with one, 10.9 with
    OMP_WAIT_POLICY=PASSIVE; a minGRU-256 layer 189k tokens/s with two, 338k with one)."""
    import torch

    from . import fastloop
    if impl == "compiled" or (cell in ("mingru", "minlstm") and fastloop.library() is not None):
        return 1
    return torch.get_num_threads()
