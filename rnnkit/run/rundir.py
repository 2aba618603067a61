"""A run directory's life: refuse to clobber one by mistake, lock it while a process trains
into it, build a new run aside and move it into place only once it holds a checkpoint, and
write its checkpoints (rank 0 only).

    runs/.latest.lock          the lock (flock): held while a process trains into runs/latest
    runs/.latest.new-XXXX/     a new run until its first checkpoint, then renamed to runs/latest
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from .. import checkpoint as ckpt
from ..errors import RnnkitError, UsageError
from ..files import Busy, FileLock, fsync_dir, private_to_shared
from .setup import Training
from .state import RunState, save_state


def check_out_dir(out: Path, *, resume: bool, force: bool, locked: bool = False) -> None:
    """Refuse a run directory another process trains into, an existing run unless --force,
    and --resume without a run to continue. Reads only: nothing is written until the corpus and
    settings have passed every check. `locked`: this process holds the lock (`claim`)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; pass a directory")
    owner = None if locked else FileLock(lock_path(out)).holder()
    if owner is not None:     # first: what the checks below see may be that process's run
        raise in_use(out, owner)
    has_run = (out / "config.json").exists()
    if resume:
        if not has_run:
            raise UsageError(f"--resume: no run to resume in {out} (no config.json)")
        return
    if has_run and not force:
        raise UsageError(f"--out {out} already holds a run; pass --resume to continue it or "
                         "--force to replace it")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in ckpt.OUTPUT_FILES) \
        if out.is_dir() else []
    if foreign:  # --force replaces the whole directory: never take someone's files with it
        raise UsageError(f"--out {out} holds files that are not part of an rnnkit run "
                         f"({', '.join(foreign[:3])}{', …' if len(foreign) > 3 else ''}); "
                         "pick a new directory")


def lock_path(out: Path) -> Path:
    """The lock beside a run directory: runs/.latest.lock for runs/latest."""
    out = Path(os.path.abspath(out))
    return out.parent / f".{out.name}.lock"


def in_use(out: Path, owner: str) -> RnnkitError:
    return RnnkitError(f"{out} is in use by another rnnkit train ({owner}); wait for it to "
                       "finish or stop it first")


class RunDirectory:
    """The lock on a run directory and, for a new run, the staging directory beside it."""

    def __init__(self, out: Path):
        self.out = Path(os.path.abspath(out))
        if self.out.parent == self.out:
            raise UsageError(f"--out {out} cannot be a run directory; pass e.g. runs/latest")
        self.lock = FileLock(lock_path(self.out), owner=f"pid {os.getpid()}")
        self.staging: Path | None = None

    def claim(self, *, resume: bool, force: bool) -> None:
        """Lock the run directory for this process, or refuse naming the process that has it;
        then check it again (`check_out_dir`), now that no other process can change it."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire(wait=False)
        except Busy as e:
            raise in_use(self.out, e.owner) from None
        check_out_dir(self.out, resume=resume, force=force, locked=True)

    def stage(self) -> Path:
        """A fresh directory next to the run where a new run is built (stale ones removed:
        holding the lock, no live process owns them)."""
        for stale in self.out.parent.glob(f".{self.out.name}.new-*"):
            shutil.rmtree(stale, ignore_errors=True)
        self.staging = Path(tempfile.mkdtemp(dir=self.out.parent, prefix=f".{self.out.name}.new-"))
        private_to_shared(self.staging, directory=True)
        return self.staging

    def publish(self) -> None:
        """Put the staged run in the run directory's place (an old run, with --force, goes)."""
        old = None
        if self.out.is_dir() and any(self.out.iterdir()):
            old = Path(tempfile.mkdtemp(dir=self.out.parent, prefix=f".{self.out.name}.old-"))
            os.replace(self.out, old)
        os.replace(self.staging, self.out)  # rename(2) also replaces an empty directory
        fsync_dir(self.out.parent)
        self.staging = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def release(self) -> None:
        """Remove an unpublished staging directory and let go of the lock."""
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
        self.lock.release()


class Checkpointer:
    """Writes a run's checkpoints into `out`. Every rank calls at the same batch (the carried
    state of all rows is gathered); only rank 0 writes."""

    def __init__(self, out: Path, run: Training, *, has_checkpoint: bool):
        self.out, self.run, self.has_checkpoint = out, run, has_checkpoint

    def save(self, state: RunState) -> None:
        team = self.run.team
        carried = team.gather_rows(state.carried) if state.batch > 0 else None
        if not team.main:
            return
        state.rng = torch.get_rng_state()
        full = RunState(**{**vars(state), "carried": carried})
        self._write(lambda path: save_state(path, self.run.model, self.run.optimizer, full),
                    self.out / "model.safetensors")
        self.has_checkpoint = True

    def save_best(self) -> None:
        if self.run.team.main:
            self._write(lambda path: ckpt.save_checkpoint(path, self.run.model),
                        self.out / "best.safetensors")

    def _write(self, write, path: Path) -> None:
        try:
            write(path)
        except OSError as e:
            kept = ("the previous one is kept" if self.has_checkpoint else
                    "no run was written (an existing one is untouched)")
            raise RnnkitError(f"could not write the checkpoint {path} ({e.strerror}); "
                              f"{kept}") from None
