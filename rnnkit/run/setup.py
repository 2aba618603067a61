"""Setting up a run: corpus → vocabulary → splits → model → optimizer, every size checked
before anything is allocated or written. Fresh runs and resumed ones share it.
"""
from __future__ import annotations

import copy
import itertools
import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..config import TrainConfig
from ..data import SAMPLERS, corpus_path, load_corpus, min_tokens_for_batch, split_corpus
from ..distributed import Team
from ..errors import Diverged, RnnkitError, UsageError
from ..models import build_model, check_size
from ..text import Vocab
from ..train import Autocast, eval_rows, make_optimizer, train_epoch


@dataclass
class Run:
    """Everything a run trains with; built once by `setup_run`."""
    config: TrainConfig
    vocab: Vocab
    train_ids: np.ndarray            # (N_train,) token ids the model learns from
    val_ids: np.ndarray              # (N_val,) held out: perplexity after every epoch
    test_ids: np.ndarray             # (N_test,) held out: perplexity at the end only
    model: nn.Module                 # the model itself (what checkpoints hold)
    net: nn.Module                   # what trains: the model, or DDP around it
    optimizer: torch.optim.Optimizer
    amp: Autocast                    # bf16 / fp16 autocast where the config asks for it
    team: Team                       # this process's place among the ranks
    corpus_tokens: int = 0           # tokens in the whole corpus (train + val + test + unused)


def resolve_device(name: str) -> torch.device:
    """The torch device a `--device` value names, refusing one that is not available."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown --device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and (not torch.cuda.is_available()
                                  or (device.index or 0) >= torch.cuda.device_count()):
        raise UsageError(f"--device {name} is not available on this machine; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name} is not available on this machine; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {name} is not supported; use cpu, cuda, mps or auto")
    return device


def corpus_slices(config: TrainConfig, vocab: Vocab | None = None
                  ) -> tuple[Vocab, np.ndarray, np.ndarray, np.ndarray, int]:
    """(vocab, train, val, test, corpus tokens) of the config's corpus, refusing slices too
    short to use.
    With `vocab` (a resumed run), the corpus must still give exactly that vocabulary."""
    ids, corpus_vocab = load_corpus(corpus_path(config), config.clean, config.token,
                                    config.min_freq)
    if vocab is not None and vocab.idx_to_token != corpus_vocab.idx_to_token:
        raise RnnkitError(f"{config.corpus} changed since the run started (its vocabulary "
                          "differs); restore the file or start a new run")
    max_tokens = config.resolved("").max_tokens          # the book's 10,000 unless given
    train, val, test = split_corpus(ids, config.val_fraction, max_tokens, config.test_fraction)
    need = min_tokens_for_batch(config.batch_size, config.num_steps, config.sampling)
    if len(train) < need:
        raise RnnkitError(f"the training slice has {len(train)} tokens; one batch of "
                          f"{config.batch_size} x {config.num_steps} needs at least {need} — "
                          "use a longer corpus or lower --batch-size / --num-steps")
    if config.val_fraction > 0 and eval_rows(len(val), config.batch_size, config.num_steps) < 1:
        raise RnnkitError(f"the validation slice has {len(val)} tokens, no full sequence of "
                          f"{config.num_steps} steps; raise --val-fraction or lower --num-steps")
    return corpus_vocab, train, val, test, len(ids)


def default_prefix(train_ids: np.ndarray, vocab: Vocab, token: str) -> str:
    """The sample prefix of a corpus other than the book: its first words (the first line's
    first 16 characters, cut at a space, or the first 3 words)."""
    tokens = [t for t in vocab.to_tokens([int(i) for i in train_ids[:200]]) if t != "<unk>"]
    if token == "word":
        return " ".join(tokens[:3])
    lines = [line.strip() for line in "".join(tokens).splitlines() if line.strip()]
    text = lines[0] if lines else "".join(tokens)
    if len(text) > 16:
        cut = text.rfind(" ", 4, 17)
        text = text[:cut] if cut > 0 else text[:16]
    return text or tokens[0]


def setup_run(config: TrainConfig, team: Team, vocab: Vocab | None = None) -> Run:
    """Corpus, model and optimizer for `config` on this rank's device (weights as initialised).
    The run's config is `config` with its automatic settings resolved for this corpus."""
    if config.batch_size % team.world:
        raise UsageError(f"--batch-size {config.batch_size} does not split evenly over "
                         f"{team.world} processes")
    vocab, train, val, test, corpus_tokens = corpus_slices(config, vocab)
    config = config.resolved(default_prefix(train, vocab, config.token))
    check_size(len(vocab), config)
    model = build_model(len(vocab), config).to(team.device)
    optimizer = make_optimizer(model.parameters(), config.optimizer, config.lr,
                               config.weight_decay)
    return Run(config, vocab, train, val, test, model, team.wrap(model), optimizer,
               Autocast.for_config(config, team.device), team, corpus_tokens)


def seconds_per_epoch(run: Run) -> float:
    """What one epoch should take: two batches timed after one warm-up, on a copy of the model
    and optimizer with the RNG forked, so the run itself is untouched."""
    c, device = run.config, run.team.device
    batches = SAMPLERS[c.sampling](run.train_ids, c.batch_size, c.num_steps, random.Random(0))
    batches = batches.rows(run.team.rows(c.batch_size))
    first = list(itertools.islice(iter(batches), 3))
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        model = copy.deepcopy(run.model)
        optimizer = make_optimizer(model.parameters(), c.optimizer, c.lr, c.weight_decay)
        try:
            seconds = [train_epoch(model, [batch], optimizer, clip=c.clip, carry_state=False,
                                   device=device, amp=Autocast.for_config(c, device))[2]
                       for batch in first]
        except Diverged:              # the run itself will stop and say why
            return math.nan
    return sum(seconds[1:]) / max(len(seconds) - 1, 1) * len(batches)
