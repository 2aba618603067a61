"""Process settings measured to suit small-CPU training (see `rnnkit bench`), applied by the CLI.

glibc returns every freed block above 128 KiB to the kernel, so each (T, B, H) buffer of a
training step comes back as fresh pages that fault on first touch; keeping freed memory in
the heap removes that cost. Nothing here changes results.
"""
from __future__ import annotations

import ctypes
import ctypes.util

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
