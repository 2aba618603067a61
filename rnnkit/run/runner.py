"""`train_run`: one training run end to end — check the run directory, set up, lock, stage,
train (loop.py), summarise. The CLI's `rnnkit train` is this function.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from .. import checkpoint as ckpt
from ..config import TrainConfig
from ..distributed import Team
from ..errors import Interrupted, RnnkitError
from ..generate import predict
from ..ngram import NgramMixture, fit_mixture
from ..train import eval_rows, evaluate, perplexity
from .loop import epoch_batches, fit
from .policies import CheckpointCadence, LearningRate, Stopping
from .report import Reporter
from .rundir import Checkpointer, RunDirectory, check_out_dir
from .report import describe
from .setup import Run, resolve_device, setup_run
from .state import RunState, load_state


def train_run(config: TrainConfig | None, out: str | Path, *, resume: bool = False,
              changes: dict | None = None, force: bool = False, json_lines: bool = False,
              checkpoint_every: float = 300.0, stdout=None) -> dict:
    """Train as `config` says, writing the run to `out`; returns the summary dict.
    With `resume`, the run in `out` goes on with its saved config, with `changes` to what a
    resumed run may change (more epochs, a longer time budget; see `TrainConfig.for_resume`)."""
    out = Path(out)
    check_out_dir(out, resume=resume, force=force)
    vocab = None
    if resume:
        saved, vocab = ckpt.load_config_and_vocab(out)
        config = saved.for_resume(changes or {})
    config.validate()
    team = Team.from_env(resolve_device(config.device))
    try:
        summary = _train(config, out, team, vocab, resume=resume, force=force,
                         json_lines=json_lines, checkpoint_every=checkpoint_every,
                         stdout=stdout or sys.stdout)
        team.barrier()  # rank 0 writes the summary last: leave together, not mid-shutdown
        return summary
    except Interrupted:
        team.barrier()  # every rank stopped at the same batch (they agreed on it)
        raise
    finally:
        team.close()


def _train(config: TrainConfig, out: Path, team: Team, vocab, *, resume: bool, force: bool,
           json_lines: bool, checkpoint_every: float, stdout) -> dict:
    run = setup_run(config, team, vocab)
    # the first lines time two batches on a copy of the model, the RNG forked: nothing changes
    header = describe(run) if team.main and not json_lines else []
    torch.manual_seed(config.seed)     # dropout draws from the global generator (checkpointed)
    rundir = RunDirectory(out)
    try:
        state, checkpoints = _open_run(run, rundir, resume=resume, force=force)
        report = Reporter(checkpoints.out, epochs=run.config.epochs,
                          sample_every=run.config.sample_every, samples=lambda: samples(run),
                          json_lines=json_lines, stdout=stdout, active=team.main)
        if resume:
            header.append(f"resumed     at epoch {state.epoch + 1}, batch {state.batch + 1}")
        for line in header:
            report.line(line)
        report.start(state.metrics)
        try:
            with Stopping(run.config, len(run.vocab)) as stopping:
                fit(run, state, rate=LearningRate(run.config), stopping=stopping,
                    cadence=CheckpointCadence(checkpoint_every), checkpoints=checkpoints,
                    report=report)
        finally:
            report.close()
        if not team.main:
            return {}
        summary = summarize(run, state, checkpoints.out)
        report.summary(summary, state.metrics)
        return summary
    finally:
        rundir.release()


def _open_run(run: Run, rundir: RunDirectory, *, resume: bool,
              force: bool) -> tuple[RunState, Checkpointer]:
    """The state to start from and the checkpointer, with the run directory locked."""
    team, failure = run.team, None
    try:
        if team.main:
            rundir.claim()
            check_out_dir(rundir.out, resume=resume, force=force)  # again, now that it is ours
        return _resumed(run, rundir) if resume else _started(run, rundir)
    except BaseException as e:
        failure = e
        raise
    finally:  # ranks other than 0 learn here whether rank 0 could open the run
        (failed,) = team.agree(failure is not None)
        if failed and failure is None:
            raise RnnkitError("rank 0 could not open the run directory (it says why)")


def _resumed(run: Run, rundir: RunDirectory) -> tuple[RunState, Checkpointer]:
    """A resumed run continues in place, from its last checkpoint's state, checked first."""
    team, path = run.team, rundir.out / "model.safetensors"
    full = [tuple(s.shape) for s in run.model.begin_state(run.config.batch_size, "meta")]
    state = load_state(path, run.model, run.optimizer, full)
    if state.epoch < run.config.epochs and state.batch >= len(epoch_batches(run, state.epoch)):
        raise RnnkitError(f"{path}: its training state (batch {state.batch} of epoch "
                          f"{state.epoch + 1}) does not fit the run")
    carried = state.carried and tuple(s.to(team.device) for s in state.carried)
    state.carried = team.own_rows(carried, run.config.batch_size)
    state.metrics = state.metrics[:state.epoch]
    if state.rng is not None:
        torch.set_rng_state(state.rng)
    if team.main:                          # config.json says how the run goes on from here
        ckpt.save_run_metadata(rundir.out, run.config, run.vocab)
        # the n-gram weights were fitted to the weights the run ended on before: refitted at
        # the new end, and until then generate and eval use the network alone
        (rundir.out / "ngram.safetensors").unlink(missing_ok=True)
    return state, Checkpointer(rundir.out, run, has_checkpoint=True)


def _started(run: Run, rundir: RunDirectory) -> tuple[RunState, Checkpointer]:
    """A new run is built aside and takes the run directory's place once it holds a
    checkpoint (until then an old run, with --force, stays whole)."""
    state = RunState()
    checkpoints = Checkpointer(rundir.out, run, has_checkpoint=False)
    if run.team.main:
        checkpoints.out = rundir.stage()
        ckpt.save_run_metadata(checkpoints.out, run.config, run.vocab)
    checkpoints.save(state)              # a run is resumable from its first moment
    if run.team.main:
        rundir.publish()
        checkpoints.out = rundir.out
    return state, checkpoints


def samples(run: Run, model: nn.Module | None = None) -> list[str]:
    """Greedy continuations of the run's prefix and of its last word (the book's two lines)."""
    prefix = run.config.prefix
    prefixes = [prefix] + ([prefix.split()[-1]] if len(prefix.split()) > 1 else [])
    return [predict(model or run.model, run.vocab, p, 50, token=run.config.token,
                    device=run.team.device) for p in prefixes]


def capped(run: Run) -> bool:
    """Whether --max-tokens cut the training slice short (then it does not end where the
    validation slice begins)."""
    return len(run.train_ids) + len(run.val_ids) + len(run.test_ids) < run.corpus_tokens


def mix_ngram(run: Run, out: Path, summary: dict) -> NgramMixture:
    """Fit the n-gram mixture on the validation slice and save it beside the weights. The
    summary's validation perplexity becomes the mixture's: it is what generate and eval use."""
    c = run.config
    before = run.train_ids if not capped(run) else None     # the text before the validation
    mixture = fit_mixture(run.model, run.train_ids, run.val_ids, len(run.vocab), c.ngram,
                          batch_size=c.batch_size, num_steps=c.num_steps, device=run.team.device,
                          before=before)
    ckpt.save_ngram(out / "ngram.safetensors", mixture)
    summary["network_val_ppl"] = summary["val_ppl"]
    summary["val_ppl"] = perplexity(*evaluate(mixture, run.val_ids, batch_size=c.batch_size,
                                              num_steps=c.num_steps, device=run.team.device,
                                              before=before))
    summary["ngram"] = {"order": mixture.ngram.order,
                        "val_ppl": mixture.report["ngram_val_ppl"]}
    return mixture


def summarize(run: Run, state: RunState, out: Path) -> dict:
    """The closing report. A run that ends on its best epoch switches to those weights first
    (they are what generate and eval use), so its samples and figures are theirs."""
    c = run.config
    final = state.metrics[-1] if state.metrics else {"train_ppl": None, "val_ppl": None,
                                                     "tokens_per_s": 0.0}
    summary = {"train_ppl": final["train_ppl"], "val_ppl": final["val_ppl"],
               "tokens_per_s": final["tokens_per_s"], "device": str(run.team.device),
               "out": str(out), "end_on": c.end_on}
    if state.best_val_ppl is not None:
        summary["best_val_ppl"] = state.best_val_ppl
        summary["best_epoch"] = min(state.metrics, key=lambda m: m["val_ppl"])["epoch"]
        if c.end_on == "best" and (out / "best.safetensors").exists():
            path = out / "best.safetensors"
            ckpt.load_weights_into(run.model, ckpt.read_checkpoint(path)[0], path)
            summary["last_val_ppl"], summary["val_ppl"] = final["val_ppl"], state.best_val_ppl
    model = mix_ngram(run, out, summary) if c.ngram and len(run.val_ids) else run.model
    model.eval()      # the closing samples and test figure are what generate and eval give
    summary["samples"] = samples(run, model)
    if len(run.test_ids):
        usable = eval_rows(len(run.test_ids), c.batch_size, c.num_steps) >= 1
        summary["test_ppl"] = perplexity(*evaluate(
            model, run.test_ids, batch_size=c.batch_size, num_steps=c.num_steps,
            device=run.team.device, before=run.val_ids)) if usable else None
    return summary
