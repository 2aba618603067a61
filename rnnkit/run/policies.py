"""The decisions a training loop consults by name: the learning rate at each step, when to
stop (a signal, the time budget, patience, divergence) and when to write a checkpoint.
"""
from __future__ import annotations

import math
import signal
import time

import torch

from ..config import TrainConfig
from ..train import scheduled_lr
from .state import RunState

# A batch whose mean loss exceeds this many times a uniform guess's (ln V) has diverged: a
# model that has learnt anything is below ln V, and char-rnn aborts at 3x its first loss,
# which for a freshly initialised model is ln V. Stopping before the update keeps the last
# good weights; a loss that is huge but finite would otherwise train on (and sample `iiii`).
DIVERGENCE_FACTOR = 3.0


class LearningRate:
    """Sets the optimizer's learning rate from the schedule, the step and the progress."""

    def __init__(self, config: TrainConfig):
        self.config = config

    def set(self, optimizer: torch.optim.Optimizer, state: RunState,
            epoch_progress: float) -> None:
        """`epoch_progress`: epochs done, fractional (2.5 = half-way through the third)."""
        c = self.config
        progress = (state.train_seconds / c.time_budget if c.time_budget
                    else epoch_progress / max(c.epochs, 1))
        lr = scheduled_lr(c.lr, step=state.steps, progress=progress, warmup=c.warmup,
                          schedule=c.schedule, scale=state.lr_scale)
        for group in optimizer.param_groups:
            group["lr"] = lr

    def after_epoch(self, state: RunState, improved: bool | None) -> None:
        """`improved`: whether validation improved this epoch (None: there is no validation)."""
        if improved is False and self.config.schedule == "plateau":
            state.lr_scale *= 0.5


class Stopping:
    """When a run stops early, and why: "signal" (SIGINT/SIGTERM), "time" (--time-budget) or
    "patience" (--patience); divergence raises from the step itself (`max_loss`). Signals only
    set a flag here: the loop stops at the next batch boundary, after a checkpoint, with every
    rank agreeing (see `Team.agree`)."""

    def __init__(self, config: TrainConfig, vocab_size: int):
        self.config = config
        self.max_loss = DIVERGENCE_FACTOR * math.log(max(vocab_size, 2))
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> "Stopping":
        for s in (signal.SIGINT, signal.SIGTERM):
            self._previous[s] = signal.getsignal(s)
            signal.signal(s, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _on_signal(self, signum, frame) -> None:
        self.signum = signum

    def after_step(self, state: RunState, team, cadence: "CheckpointCadence"
                   ) -> tuple[str | None, bool]:
        """(why the run stops after this step, or None; whether a checkpoint is due), agreed
        by every rank."""
        signalled, out_of_time, due = team.agree(self.signum is not None,
                                                 self._out_of_time(state), cadence.due())
        return ("signal" if signalled else "time" if out_of_time else None), due

    def after_epoch(self, state: RunState, team, stop: str | None) -> str | None:
        """Why the run stops at the end of this epoch (`stop`: why its batches stopped)."""
        (signalled,) = team.agree(self.signum is not None)
        if signalled:
            return "signal"
        if stop is None and self.config.patience and \
                state.epochs_since_best >= self.config.patience:
            return "patience"
        return stop

    def _out_of_time(self, state: RunState) -> bool:
        return bool(self.config.time_budget) and state.train_seconds >= self.config.time_budget


class CheckpointCadence:
    """A mid-epoch checkpoint every `every` seconds (each epoch's end writes one anyway)."""

    def __init__(self, every: float):
        self.every, self.last = every, time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self.last > self.every

    def written(self) -> None:
        self.last = time.monotonic()
