"""Data-parallel training on torch.distributed: one process per rank (launched by torchrun or
`rnnkit train --nproc N`), each training disjoint rows of every global batch under
`DistributedDataParallel` (gloo on CPU, nccl on CUDA). Single-process runs use the same calls,
which then do nothing.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import torch
import torch.distributed as dist
from torch import nn


class Team:
    """This process's place among the ranks, and the few collectives a run needs."""

    def __init__(self, rank: int = 0, world: int = 1, device: torch.device | None = None):
        self.rank, self.world = rank, world
        self.device = device or torch.device("cpu")
        self.main = rank == 0

    @classmethod
    def from_env(cls, device: torch.device) -> "Team":
        """Join the process group torchrun describes in the environment (WORLD_SIZE > 1)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(device=device)
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), device)

    def rows(self, batch_size: int) -> slice:
        """This rank's rows of a global batch: contiguous, the same rows every batch."""
        share = batch_size // self.world
        return slice(self.rank * share, (self.rank + 1) * share)

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.world == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def agree(self, *flags: bool) -> list[bool]:
        """True where any rank says True, so every rank stops or saves at the same batch."""
        if self.world == 1:
            return [bool(f) for f in flags]
        t = torch.tensor([float(f) for f in flags], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def sum(self, *values: float) -> list[float]:
        """Sums over ranks (loss and token counts), in float64."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def gather_rows(self, state: tuple) -> tuple:
        """The carried state of all rows, rank by rank: (…, B/world, H) → (…, B, H)."""
        if self.world == 1 or state is None:
            return state
        full = []
        for s in state:
            parts = [torch.empty_like(s) for _ in range(self.world)]
            dist.all_gather(parts, s.detach().contiguous())
            full.append(torch.cat(parts, dim=s.dim() - 2))
        return tuple(full)

    def own_rows(self, state: tuple, batch_size: int) -> tuple:
        """This rank's rows of a full saved state."""
        if self.world == 1 or state is None:
            return state
        sl = self.rows(batch_size)
        return tuple(s.narrow(s.dim() - 2, sl.start, sl.stop - sl.start) for s in state)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(nproc: int, argv: list[str], grace: float = 30.0) -> int:
    """Run `rnnkit <argv>` as `nproc` ranks on this machine (what `torchrun --standalone`
    does), forwarding SIGINT / SIGTERM to every rank so that they save and stop together.

    Returns rank 0's exit status (the first failure's if rank 0 succeeded). When a rank fails,
    the others would wait for it forever in a collective: they get SIGTERM, then SIGKILL."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    ranks = [subprocess.Popen([sys.executable, "-m", "rnnkit", *argv],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)})
             for r in range(nproc)]

    def forward(signum, frame):
        for p in ranks:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        failed_at = None
        while any(p.poll() is None for p in ranks):
            if failed_at is None and any(p.returncode not in (None, 0) for p in ranks):
                failed_at = time.monotonic()
                forward(signal.SIGTERM, None)
            if failed_at is not None and time.monotonic() - failed_at > grace:
                for p in ranks:
                    p.kill()
            time.sleep(0.05)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    codes = [128 - c if c < 0 else c for c in (p.returncode for p in ranks)]  # -15 → 143
    return codes[0] or next((c for c in codes if c), 0)
