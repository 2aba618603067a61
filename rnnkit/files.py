"""Safe file operations shared by the corpus cache and run directories: regular-file checks,
atomic replacement, bounded reads and OS file locks. Nothing here knows about models or text.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import tempfile
from pathlib import Path

from .errors import RnnkitError


def check_regular_file(path: Path, what: str) -> os.stat_result:
    """stat(`path`), refusing a missing path, a directory, a FIFO or a device before anything
    opens it: reading a FIFO blocks forever and /dev/zero never ends."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise RnnkitError(f"{what} not found: {path}") from None
    except OSError as e:
        raise RnnkitError(f"cannot read {what} {path}: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise RnnkitError(f"{what} {path} is a directory; pass a file")
    if not stat.S_ISREG(st.st_mode):
        raise RnnkitError(f"{what} {path} is not a regular file (a pipe, socket or device); "
                          "pass a file")
    return st


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (a JSON file, a header)."""
    size = check_regular_file(path, what).st_size
    if size > limit:
        raise RnnkitError(f"{what} {path} is {size:,} bytes, more than the {limit:,} such a "
                          "file can hold; it is not an rnnkit file")
    with open(path, "rb") as f:
        return f.read(limit + 1)[:limit]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def private_to_shared(path: Path, directory: bool = False) -> None:
    """Give a file made by mkstemp / mkdtemp (mode 0600 / 0700) the mode an ordinary
    open() or mkdir() would have, so a run directory reads like any other."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a reader sees the old file or the new, never a mix;
    the temporary file is private to this writer and removed on any failure."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        private_to_shared(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


class Busy(RnnkitError):
    """Another process holds the lock; `owner` is what it wrote into the lock file."""

    def __init__(self, path: Path, owner: str):
        super().__init__(owner)
        self.path, self.owner = path, owner


class FileLock:
    """An exclusive `flock` on `path`, which the OS releases when the process dies (so a
    SIGKILLed holder never leaves a stale lock). The holder writes `owner` into the file."""

    def __init__(self, path: Path, owner: str = ""):
        self.path, self.owner, self.fd = Path(path), owner, None

    def acquire(self, wait: bool = True) -> "FileLock":
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except OSError as e:
                owner = os.read(fd, 4096).decode("utf-8", "replace").strip()
                os.close(fd)
                if e.errno in (errno.EAGAIN, errno.EACCES):
                    raise Busy(self.path, owner or "another process") from None
                raise
            # the previous holder may have unlinked the file between our open and our lock:
            # then we hold a lock nobody else can see; start again on the new file
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, self.owner.encode("utf-8", "backslashreplace"))
        self.fd = fd
        return self

    def holder(self) -> str | None:
        """Who holds the lock now (the owner it wrote), or None; creates nothing."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return os.read(fd, 4096).decode("utf-8", "replace").strip() or "another process"
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def release(self) -> None:
        """Unlink the file while still holding the lock, then let go of it."""
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
