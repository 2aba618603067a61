"""The training loop, in the shape of the book's `train_ch8` and nanoGPT's main loop: epochs →
batches → one optimizer step each. Each decision is taken at one place of the loop body: the
learning rate (policies.LearningRate), the step (train.train_step), stopping (policies.Stopping),
checkpoints (rundir.Checkpointer, when policies.CheckpointCadence says), evaluation and the
report at the end of each epoch.
"""
from __future__ import annotations

import math
import random
import signal
import time

from ..data import SAMPLERS, Batches
from ..errors import Diverged, Interrupted
from ..train import evaluate, perplexity, train_step
from .policies import CheckpointCadence, LearningRate, Stopping
from .report import Reporter
from .rundir import Checkpointer
from .setup import Training
from .state import RunState


def epoch_rng(seed: int, epoch: int) -> random.Random:
    """The batch order of one epoch: a pure function of (seed, epoch), so resume is exact."""
    return random.Random(f"rnnkit:{seed}:{epoch}")


def epoch_batches(t: Training, epoch: int) -> Batches:
    """This rank's rows of every minibatch of `epoch`."""
    c = t.config
    batches = SAMPLERS[c.sampling](t.train_ids, c.batch_size, c.num_steps,
                                   epoch_rng(c.seed, epoch))
    return batches.rows(t.team.rows(c.batch_size))


def fit(t: Training, state: RunState, *, stopping: Stopping, cadence: CheckpointCadence,
        checkpoints: Checkpointer, report: Reporter) -> str | None:
    """Train from wherever `state` stands until the configured epochs or a stop; returns why
    it stopped early ("time" or "patience"), or None."""
    c, team, rate = t.config, t.team, LearningRate(t.config)
    sequential = c.sampling == "sequential"
    while state.epoch < c.epochs:
        batches = epoch_batches(t, state.epoch)
        num_batches = max(len(batches), 1)
        sums = EpochSums(state, team)               # the epoch's loss and tokens, over ranks
        carried = state.carried if state.batch > 0 else None
        stop, tick = None, time.monotonic()
        t.net.train()
        for X, Y in batches.iter_from(state.batch):
            rate.set(t.optimizer, state, state.epoch + state.batch / num_batches)
            try:
                loss, carried = train_step(t.net, X, Y, carried, t.optimizer, clip=c.clip,
                                           carry_state=sequential, device=team.device,
                                           amp=t.amp, max_loss=stopping.max_loss)
            except Diverged as e:
                raise Diverged(f"{e} at batch {state.batch + 1} of epoch {state.epoch + 1} (a "
                               f"uniform guess scores {math.log(len(t.vocab)):.2f}); training "
                               "stopped and the last good checkpoint is kept — lower --lr (now "
                               f"{c.lr}) or --clip (now {c.clip})") from None
            now = time.monotonic()
            sums.add(loss * Y.numel(), Y.numel())
            state.batch, state.steps = state.batch + 1, state.steps + 1
            state.train_seconds, tick = state.train_seconds + now - tick, now
            stop, due = stopping.after_step(state, team, cadence)
            if stop or due:                                       # a checkpoint mid-epoch
                sums.into(state)
                state.carried = carried if sequential else None
                checkpoints.save(state)
                cadence.written()
            if stop:
                break
        if stop == "signal":
            raise Interrupted(stopping.signum or signal.SIGTERM,
                              f"epoch {state.epoch + 1}, batch {state.batch}",
                              str(checkpoints.out))
        sums.into(state)                          # the reported perplexity is global
        record, improved = end_of_epoch(t, state)
        rate.after_epoch(state, improved)
        if improved:
            checkpoints.save_best()
        state.start_epoch()
        checkpoints.save(state)
        cadence.written()
        report.epoch(record, state.metrics)
        stop = stopping.after_epoch(state, team, stop)
        if stop == "signal":
            raise Interrupted(stopping.signum or signal.SIGTERM, f"the end of epoch "
                              f"{state.epoch}", str(checkpoints.out))
        if stop:
            return stop  # --time-budget spent or --patience exhausted: end as after a last epoch
    return None


class EpochSums:
    """The epoch's summed loss and tokens over every rank, merged into `state` when it is saved.
    One process adds each batch to the sums it resumed from, in the order an uninterrupted run
    adds them, so a resumed run's figures are bitwise the same; several processes add their own
    batches from zero and sum over the ranks at the merge."""

    def __init__(self, state: RunState, team):
        self.team, self.start = team, time.perf_counter()
        resumed = (state.epoch_loss, state.epoch_tokens, state.epoch_seconds)
        self.base = (0.0, 0, resumed[2]) if team.world == 1 else resumed
        self.loss, self.tokens = resumed[:2] if team.world == 1 else (0.0, 0)

    def add(self, loss: float, tokens: int) -> None:
        self.loss += loss
        self.tokens += tokens

    def into(self, state: RunState) -> None:
        loss, tokens = self.team.sum(self.loss, self.tokens)
        state.epoch_loss, state.epoch_tokens = self.base[0] + loss, self.base[1] + int(tokens)
        state.epoch_seconds = self.base[2] + time.perf_counter() - self.start


def end_of_epoch(t: Training, state: RunState) -> tuple[dict, bool | None]:
    """The finished epoch's metrics record (validation perplexity included), appended to
    `state.metrics`, and whether validation improved on the best so far (None: no validation)."""
    c = t.config
    record = {"epoch": state.epoch + 1,
              "train_ppl": perplexity(state.epoch_loss, state.epoch_tokens), "val_ppl": None,
              "tokens_per_s": state.epoch_tokens / max(state.epoch_seconds, 1e-9)}
    if len(t.val_ids):
        record["val_ppl"] = perplexity(*evaluate(t.model, t.val_ids, batch_size=c.batch_size,
                                                 num_steps=c.num_steps, device=t.team.device))
    state.metrics.append(record)
    val = record["val_ppl"]
    improved = val is not None and (state.best_val_ppl is None or val < state.best_val_ppl)
    if improved:
        state.best_val_ppl, state.epochs_since_best = val, 0
    elif val is not None:
        state.epochs_since_best += 1
    return record, (improved if val is not None else None)
