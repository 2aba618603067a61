"""`Run`: one run directory and everything it holds — its resolved config, vocabulary, corpus
slices, model and training state — and what every caller does with it: train, evaluate,
generate, decode. `rnnkit train | eval | generate | serve | export` are thin adapters over it.

    Run.new(config, out)      a fresh run, from resolved settings (run/settings.py)
    Run.open(run_dir)         an existing one: to resume, evaluate, generate, serve or export
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from .. import checkpoint as ckpt
from ..config import TrainConfig
from ..copies import COPY_MIN, CopyIndex, CopyReport
from ..data import Slices, read_slices
from ..distributed import Team
from ..errors import Interrupted, RnnkitError
from ..generate import beam_search, generate_ids, prefix_ids
from ..models import LanguageModel
from ..perf import torch_threads, training_threads
from ..text import Vocab, detokenize, extend
from ..train import evaluate
from .loop import epoch_batches, fit
from .policies import CheckpointCadence, Stopping
from .closing import samples, summarize
from .report import Reporter, describe
from .rundir import Checkpointer, RunDirectory, check_out_dir
from .setup import Training, resolve_device, seconds_per_epoch, setup_training
from .state import RunState, load_state


@dataclass
class Sample:
    """One generated text: the prefix and what followed it."""
    text: str
    ids: list[int]                   # the prefix's ids, then the generated ones
    generated_from: int              # where the generated ids start in `ids`
    log_prob: float | None = None    # with beam search: the continuation's log-probability


class Run:
    """A run directory (`out`) with its config and vocabulary; the model, the corpus slices
    and the training state are read on first use."""

    def __init__(self, out: str | Path, config: TrainConfig, vocab: Vocab | None = None, *,
                 exists: bool = False, weights: str | None = None, ngram: bool = True,
                 device: str | torch.device = "cpu"):
        self.out, self.config, self.vocab, self.exists = Path(out), config, vocab, exists
        self.device = torch.device(device)
        self._load = {"weights": weights, "ngram": ngram, "device": device}

    @classmethod
    def new(cls, config: TrainConfig, out: str | Path) -> "Run":
        """A run to train into `out` (nothing is read or written before `train`)."""
        return cls(out, config)

    @classmethod
    def open(cls, run_dir: str | Path, *, weights: str | None = None, ngram: bool = True,
             device: str | torch.device = "cpu") -> "Run":
        """An existing run: its config and vocabulary are read and checked now; its model
        (`weights`: best, last or a file; with its n-gram model unless `ngram` is False) and
        its corpus on first use."""
        config, vocab = ckpt.load_config_and_vocab(run_dir)
        return cls(run_dir, config, vocab, exists=True, weights=weights, ngram=ngram,
                   device=device)

    @classmethod
    def resume(cls, run_dir: str | Path) -> "Run":
        """An existing run, to train on where it stopped (refused, as a usage mistake, where
        `run_dir` holds no run)."""
        check_out_dir(Path(run_dir), resume=True, force=False)
        return cls.open(run_dir)

    def check_target(self, force: bool = False) -> None:
        """Before anything is read: a new run may not clobber a run or foreign files in its
        directory unless `force` (reads only; `RunDirectory.claim` checks again under a lock)."""
        if not self.exists:
            check_out_dir(self.out, resume=False, force=force)

    # ---- using a trained run ------------------------------------------------------------------
    @cached_property
    def model(self) -> LanguageModel:
        return ckpt.load_model(self.out, self.config, self.vocab, **self._load)

    @cached_property
    def slices(self) -> Slices:
        """The run's corpus slices, in the run's vocabulary."""
        return read_slices(self.config, self.vocab)[1]

    def evaluate(self, split: str = "val", ids: np.ndarray | None = None) -> tuple[float, int]:
        """Summed cross-entropy (nats) and tokens scored, on a slice of the run's corpus (the
        text before it read first) or on `ids`, windows as the run trained."""
        before = None
        if ids is None:
            ids, before = self.slices[split], self.slices.before(split)
        return evaluate(self.model, ids, batch_size=self.config.batch_size,
                        num_steps=self.config.num_steps, device=self.device, before=before)

    def encode(self, text: str) -> tuple[list[int], list[str]]:
        """A prefix's ids, and its tokens that are not in the vocabulary (read as <unk>)."""
        return prefix_ids(self.vocab, text, self.config.token)

    def decode(self, ids) -> str:
        return detokenize(self.vocab.to_tokens([int(i) for i in ids]), self.config.token)

    def generate(self, prefix: str, num_chars: int, *, num_samples: int = 1,
                 temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None, beam: int | None = None,
                 length_penalty: float = 0.0, stop_at: str | None = None) -> list[Sample]:
        """The prefix and what follows it, sampled (greedy at temperature 0) or, with `beam`,
        the likeliest texts best first (with their log-probabilities)."""
        ids, _ = self.encode(prefix)
        if not ids:
            raise ValueError("the prefix holds no token")
        if beam is None:
            out = generate_ids(self.model, ids, num_chars, num_samples=num_samples,
                               temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                               device=self.device)
            return [Sample(self.continuation(prefix, row), ids + row, len(ids))
                    for row in out.tolist()]
        stop = None
        if stop_at is not None:
            stop_ids, unknown = self.encode(stop_at)
            if len(stop_ids) != 1 or unknown:
                raise ValueError("the stop token must be one token of the run's vocabulary")
            stop = stop_ids[0]
        best = beam_search(self.model, ids, num_chars, beam=beam, num_results=num_samples,
                           length_penalty=length_penalty, stop_id=stop, device=self.device)
        return [Sample(self.continuation(prefix, row), ids + row, len(ids), logp)
                for row, logp in best]

    def continuation(self, prefix: str, ids) -> str:
        """The prefix and the tokens `ids` made after it, as one text."""
        return extend(prefix, self.vocab.to_tokens([int(i) for i in ids]), self.config.token)

    @cached_property
    def copy_index(self) -> CopyIndex:
        """The suffix array of the training slice: built on first use and kept beside the run
        as copies.safetensors (checked against the training slice whenever it is read)."""
        path = self.out / "copies.safetensors"
        if path.exists():
            return CopyIndex.load(path, self.slices["train"])
        index = CopyIndex.build(self.slices["train"])
        try:
            index.save(path)
        except OSError:                   # a read-only run still answers, from memory
            pass
        return index

    def copies(self, sample: Sample, copy_min: int | None = None) -> CopyReport:
        """What `sample` shares verbatim with the training slice (`copies.CopyIndex.report`);
        `copy_min`: the shortest span counted as a copy (20 characters or 6 words)."""
        return self.copy_index.report(np.asarray(sample.ids), sample.generated_from,
                                      copy_min or COPY_MIN[self.config.token])

    def training_text(self, start: int, end: int) -> str:
        """Tokens [start, end) of the training slice, as text."""
        train = self.slices["train"]
        return self.decode(train[max(start, 0):min(end, len(train))])

    # ---- training -----------------------------------------------------------------------------
    def train(self, *, changes: dict | None = None, force: bool = False,
              json_lines: bool = False, checkpoint_every: float = 300.0, stdout=None) -> dict:
        """Train as the config says (an opened run: goes on where it stopped, with `changes` to
        what a resumed run may change, `TrainConfig.for_resume`); returns the summary dict."""
        self.check_target(force)
        config = self.config.for_resume(changes or {}) if self.exists else self.config
        team = Team.from_env(resolve_device(config.validate().device))
        try:
            summary = self._train(config, team, force=force, json_lines=json_lines,
                                  checkpoint_every=checkpoint_every, stdout=stdout or sys.stdout)
            team.barrier()  # rank 0 writes the summary last: leave together, not mid-shutdown
            return summary
        except Interrupted:
            team.barrier()  # every rank stopped at the same batch (they agreed on it)
            raise
        finally:
            team.close()

    def _train(self, config: TrainConfig, team: Team, *, force: bool, json_lines: bool,
               checkpoint_every: float, stdout) -> dict:
        with torch_threads(training_threads(config.impl, config.cell)):
            return self._train_on(config, team, force=force, json_lines=json_lines,
                                  checkpoint_every=checkpoint_every, stdout=stdout)

    def _train_on(self, config: TrainConfig, team: Team, *, force: bool, json_lines: bool,
                  checkpoint_every: float, stdout) -> dict:
        saved_patience = self.config.patience         # what the run had when it stopped
        t = setup_training(config, team, self.vocab)
        self.config, self.vocab, self.slices, self.model = t.config, t.vocab, t.slices, t.model
        header = []
        if team.main and not json_lines:  # the probe: two batches on a copy, the RNG forked
            header = describe(t, seconds_per_epoch(t))
        torch.manual_seed(config.seed)   # dropout draws from the global generator (checkpointed)
        rundir = RunDirectory(self.out)
        try:
            state, checkpoints = self._open(t, rundir, force=force)
            report = Reporter(checkpoints.out, epochs=t.config.epochs,
                              sample_every=t.config.sample_every, samples=lambda: samples(t),
                              json_lines=json_lines, stdout=stdout, active=team.main)
            if self.exists:
                waited = _patience_afresh(saved_patience, t.config, state)
                header.append(f"resumed     at epoch {state.epoch + 1}, batch {state.batch + 1}"
                              + (f"; it had stopped early ({waited} epoch{'s' * (waited != 1)} "
                                 f"without a better validation), so --patience "
                                 f"{t.config.patience} counts again from here" if waited else ""))
            for line in header:
                report.line(line)
            report.start(state.metrics)
            try:
                with Stopping(t.config, len(t.vocab)) as stopping:
                    stopped = fit(t, state, stopping=stopping,
                                  cadence=CheckpointCadence(checkpoint_every),
                                  checkpoints=checkpoints, report=report)
            finally:
                report.close()
            if not team.main:
                return {}
            summary = summarize(t, state, checkpoints.out, stopped)
            report.summary(summary, state.metrics)
            return summary
        finally:
            rundir.release()

    def _open(self, t: Training, rundir: RunDirectory, *, force: bool
              ) -> tuple[RunState, Checkpointer]:
        """The state to start from and the checkpointer, with the run directory locked."""
        failure = None
        try:
            if t.team.main:
                rundir.claim(resume=self.exists, force=force)
            return _resumed(t, rundir) if self.exists else _started(t, rundir)
        except BaseException as e:
            failure = e
            raise
        finally:  # ranks other than 0 learn here whether rank 0 could open the run
            (failed,) = t.team.agree(failure is not None)
            if failed and failure is None:
                raise RnnkitError("rank 0 could not open the run directory (it says why)")


def train_run(config: TrainConfig | None, out: str | Path, *, resume: bool = False,
              changes: dict | None = None, force: bool = False, json_lines: bool = False,
              checkpoint_every: float = 300.0, stdout=None) -> dict:
    """Train as `config` says, writing the run to `out`; returns the summary dict. With
    `resume`, the run in `out` goes on with its saved config and `changes`."""
    run = Run.resume(out) if resume else Run.new(config, out)
    return run.train(changes=changes, force=force, json_lines=json_lines,
                     checkpoint_every=checkpoint_every, stdout=stdout)


def _resumed(t: Training, rundir: RunDirectory) -> tuple[RunState, Checkpointer]:
    """A resumed run continues in place, from its last checkpoint's state, checked first."""
    team, path = t.team, rundir.out / "model.safetensors"
    full = [tuple(s.shape) for s in t.model.begin_state(t.config.batch_size, "meta")]
    state = load_state(path, t.model, t.optimizer, full)
    # batch == the epoch's batches: a stop after its last batch, before its end (evaluation,
    # report) ran; resume runs that end. Beyond it the state is not this run's.
    if state.epoch < t.config.epochs and state.batch > len(epoch_batches(t, state.epoch)):
        raise RnnkitError(f"{path}: its training state (batch {state.batch} of epoch "
                          f"{state.epoch + 1}) does not fit the run")
    carried = state.carried and tuple(s.to(team.device) for s in state.carried)
    state.carried = team.own_rows(carried, t.config.batch_size)
    state.metrics = state.metrics[:state.epoch]
    if state.rng is not None:
        torch.set_rng_state(state.rng)
    if team.main:                          # config.json says how the run goes on from here
        ckpt.save_run_metadata(rundir.out, t.config, t.vocab)
        # the n-gram weights were fitted to the weights the run ended on before: refitted at
        # the new end, and until then generate and eval use the network alone
        (rundir.out / "ngram.safetensors").unlink(missing_ok=True)
    return state, Checkpointer(rundir.out, t, has_checkpoint=True)


def _started(t: Training, rundir: RunDirectory) -> tuple[RunState, Checkpointer]:
    """A new run is built aside and takes the run directory's place once it holds a
    checkpoint (until then an old run, with --force, stays whole)."""
    state = RunState()
    checkpoints = Checkpointer(rundir.out, t, has_checkpoint=False)
    if t.team.main:
        checkpoints.out = rundir.stage()
        ckpt.save_run_metadata(checkpoints.out, t.config, t.vocab)
    checkpoints.save(state)              # a run is resumable from its first moment
    if t.team.main:
        rundir.publish()
        checkpoints.out = rundir.out
    return state, checkpoints


def _patience_afresh(saved_patience: int, config: TrainConfig, state: RunState) -> int:
    """A run that stopped on its --patience and is resumed (to train longer) gets its patience
    again — otherwise it would stop after one more epoch; returns the epochs it had waited
    (0: it had not stopped on patience)."""
    if not (saved_patience and config.patience and state.epochs_since_best >= saved_patience):
        return 0
    waited, state.epochs_since_best = state.epochs_since_best, 0
    return waited
