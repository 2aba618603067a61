"""The training loop: epochs → batches → step → end of epoch, in the shape of the book's
`train_ch8`. Everything else it consults by name: the learning rate, stopping, checkpoint
cadence (policies.py), where files go (rundir.py) and what is shown (report.py).
"""
from __future__ import annotations

import math
import random
import signal
import time

from ..data import SAMPLERS, Batches
from ..errors import Diverged, Interrupted
from ..train import evaluate, perplexity, train_epoch
from .policies import CheckpointCadence, LearningRate, Stopping
from .report import Reporter
from .rundir import Checkpointer
from .setup import Run
from .state import RunState


def epoch_rng(seed: int, epoch: int) -> random.Random:
    """The batch order of one epoch: a pure function of (seed, epoch), so resume is exact."""
    return random.Random(f"rnnkit:{seed}:{epoch}")


def epoch_batches(run: Run, epoch: int) -> Batches:
    """This rank's rows of every minibatch of `epoch`."""
    c = run.config
    batches = SAMPLERS[c.sampling](run.train_ids, c.batch_size, c.num_steps,
                                   epoch_rng(c.seed, epoch))
    return batches.rows(run.team.rows(c.batch_size))


def fit(run: Run, state: RunState, *, rate: LearningRate, stopping: Stopping,
        cadence: CheckpointCadence, checkpoints: Checkpointer, report: Reporter) -> None:
    """Train from wherever `state` stands until the configured epochs or an early stop."""
    for epoch in range(state.epoch, run.config.epochs):
        out_of_time = train_batches(run, state, epoch_batches(run, epoch), rate=rate,
                                    stopping=stopping, cadence=cadence, checkpoints=checkpoints)
        record, improved = end_of_epoch(run, state)
        rate.after_epoch(state, improved)
        if improved:
            checkpoints.save_best()
        state.start_epoch()
        checkpoints.save(state)
        cadence.written()
        report.epoch(record, state.metrics)
        (signalled,) = run.team.agree(stopping.signalled)
        if signalled:
            raise Interrupted(stopping.signum or signal.SIGTERM,
                              f"the end of epoch {epoch + 1}", str(checkpoints.out))
        if out_of_time or stopping.out_of_patience(state):
            break  # --time-budget spent or --patience exhausted: end as after a last epoch


def train_batches(run: Run, state: RunState, batches: Batches, *, rate: LearningRate,
                  stopping: Stopping, cadence: CheckpointCadence,
                  checkpoints: Checkpointer) -> bool:
    """The rest of the epoch in progress: one optimizer step per batch, from batch
    `state.batch` on. Leaves the epoch's sums in `state`; True when the time budget ran out."""
    c, team = run.config, run.team
    first, epoch, num_batches = state.batch, state.epoch, max(len(batches), 1)
    loss0, tokens0, seconds0 = state.epoch_loss, state.epoch_tokens, state.epoch_seconds
    rate.set(run.optimizer, state, epoch + first / num_batches)
    start = tick = time.monotonic()
    out_of_time = False

    def after_step(i: int, carried: tuple, loss_sum: float, tokens: int) -> bool:
        nonlocal tick, out_of_time
        now = time.monotonic()
        state.steps += 1
        state.train_seconds += now - tick
        tick = now
        rate.set(run.optimizer, state, epoch + (first + i + 1) / num_batches)
        interrupt, out_of_time, due = team.agree(
            stopping.signalled, stopping.out_of_time(state), cadence.due())
        if interrupt or due:
            loss_sum, tokens = team.sum(loss_sum, tokens)
            state.batch = first + i + 1
            state.carried = carried if c.sampling == "sequential" else None
            state.epoch_loss, state.epoch_tokens = loss0 + loss_sum, tokens0 + int(tokens)
            state.epoch_seconds = seconds0 + now - start
            checkpoints.save(state)
            cadence.written()
        if interrupt:
            raise Interrupted(stopping.signum or signal.SIGTERM,
                              f"epoch {epoch + 1}, batch {first + i + 1}", str(checkpoints.out))
        return out_of_time

    try:
        loss_sum, tokens, seconds = train_epoch(
            run.net, batches.iter_from(first), run.optimizer, clip=c.clip,
            carry_state=c.sampling == "sequential", device=team.device,
            state=state.carried if first > 0 else None, on_batch=after_step, amp=run.amp,
            max_loss=stopping.max_loss)
    except Diverged as e:
        raise Diverged(f"{e} of epoch {epoch + 1} (a uniform guess scores "
                       f"{math.log(len(run.vocab)):.2f}); training stopped and the last good "
                       f"checkpoint is kept — lower --lr (now {c.lr}) or --clip "
                       f"(now {c.clip})") from None
    loss_sum, tokens = team.sum(loss_sum, tokens)   # the reported perplexity is global
    state.epoch_loss, state.epoch_tokens = loss0 + loss_sum, tokens0 + tokens
    state.epoch_seconds = seconds0 + seconds
    return out_of_time


def end_of_epoch(run: Run, state: RunState) -> tuple[dict, bool]:
    """The finished epoch's metrics record (validation perplexity included), appended to
    `state.metrics`, and whether validation improved on the best so far (None: no validation)."""
    c = run.config
    record = {"epoch": state.epoch + 1,
              "train_ppl": perplexity(state.epoch_loss, state.epoch_tokens), "val_ppl": None,
              "tokens_per_s": state.epoch_tokens / max(state.epoch_seconds, 1e-9)}
    if len(run.val_ids):
        record["val_ppl"] = perplexity(*evaluate(run.model, run.val_ids, batch_size=c.batch_size,
                                                 num_steps=c.num_steps, device=run.team.device))
    state.metrics.append(record)
    val = record["val_ppl"]
    improved = val is not None and (state.best_val_ppl is None or val < state.best_val_ppl)
    if improved:
        state.best_val_ppl, state.epochs_since_best = val, 0
    elif val is not None:
        state.epochs_since_best += 1
    return record, (improved if val is not None else None)
