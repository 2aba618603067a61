"""Setting up a run's training: corpus → vocabulary → slices → model → optimizer, every size
checked before anything is allocated or written. Fresh runs and resumed ones share it.
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
from ..data import SAMPLERS, Slices, min_tokens_for_batch, read_slices
from ..distributed import Team
from ..errors import Diverged, RnnkitError, UsageError
from ..models import LanguageModel, build_model, check_size
from ..text import Vocab
from ..train import Autocast, eval_rows, make_optimizer, train_epoch
from .settings import check_processes


@dataclass
class Training:
    """Everything a run trains with; built once by `setup_training`."""
    config: TrainConfig              # resolved for this corpus (what config.json holds)
    vocab: Vocab
    slices: Slices                   # train (the model learns from), val (every epoch), test
    model: LanguageModel             # the model itself (what checkpoints hold)
    net: nn.Module                   # what trains: the model, or DDP around it
    optimizer: torch.optim.Optimizer
    amp: Autocast                    # bf16 / fp16 autocast where the config asks for it
    team: Team                       # this process's place among the ranks

    @property
    def train_ids(self) -> np.ndarray:
        return self.slices["train"]

    @property
    def val_ids(self) -> np.ndarray:
        return self.slices["val"]

    @property
    def test_ids(self) -> np.ndarray:
        return self.slices["test"]


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


def training_slices(config: TrainConfig, vocab: Vocab | None = None) -> tuple[Vocab, Slices]:
    """The config's corpus, its vocabulary and slices (`data.read_slices`), refusing slices too
    short to train or validate on. With `vocab` (a resumed run), the corpus must still give
    exactly that vocabulary."""
    corpus_vocab, slices = read_slices(config)
    if vocab is not None and vocab.idx_to_token != corpus_vocab.idx_to_token:
        raise RnnkitError(f"{config.corpus} changed since the run started (its vocabulary "
                          "differs); restore the file or start a new run")
    train, val = slices["train"], slices["val"]
    need = min_tokens_for_batch(config.batch_size, config.num_steps, config.sampling)
    if len(train) < need:
        raise RnnkitError(f"the training slice has {len(train)} tokens; one batch of "
                          f"{config.batch_size} x {config.num_steps} needs at least {need} — "
                          "use a longer corpus or lower --batch-size / --num-steps")
    if config.val_fraction > 0 and eval_rows(len(val), config.batch_size, config.num_steps) < 1:
        raise RnnkitError(f"the validation slice has {len(val)} tokens, no full sequence of "
                          f"{config.num_steps} steps; raise --val-fraction or lower --num-steps")
    return corpus_vocab, slices


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


def setup_training(config: TrainConfig, team: Team, vocab: Vocab | None = None) -> Training:
    """Corpus, model and optimizer for `config` on this rank's device (weights as initialised).
    The run's config is `config` with its automatic settings resolved for this corpus."""
    check_processes(config.batch_size, team.world)
    vocab, slices = training_slices(config, vocab)
    config = config.resolved(default_prefix(slices["train"], vocab, config.token))
    check_size(len(vocab), config)
    model = build_model(len(vocab), config).to(team.device)
    optimizer = make_optimizer(model.parameters(), config.optimizer, config.lr,
                               config.weight_decay)
    return Training(config, vocab, slices, model, team.wrap(model), optimizer,
                    Autocast.for_config(config, team.device), team)


def seconds_per_epoch(run: Training) -> float:
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
