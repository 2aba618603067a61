"""Setting up a run: corpus → vocabulary → splits → model → optimizer, every size checked
before anything is allocated or written. Fresh runs and resumed ones share it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..config import TrainConfig
from ..data import load_corpus, min_tokens_for_batch, split_corpus
from ..distributed import Team
from ..errors import RnnkitError, UsageError
from ..models import build_model, check_size
from ..text import Vocab
from ..train import Autocast, eval_rows, make_optimizer


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
                  ) -> tuple[Vocab, np.ndarray, np.ndarray, np.ndarray]:
    """(vocab, train, val, test) of the config's corpus, refusing slices too short to use.
    With `vocab` (a resumed run), the corpus must still give exactly that vocabulary."""
    ids, corpus_vocab = load_corpus(config.corpus, config.clean, config.token, config.min_freq)
    if vocab is not None and vocab.idx_to_token != corpus_vocab.idx_to_token:
        raise RnnkitError(f"{config.corpus} changed since the run started (its vocabulary "
                          "differs); restore the file or start a new run")
    train, val, test = split_corpus(ids, config.val_fraction, config.max_tokens,
                                    config.test_fraction)
    need = min_tokens_for_batch(config.batch_size, config.num_steps, config.sampling)
    if len(train) < need:
        raise RnnkitError(f"the training slice has {len(train)} tokens; one batch of "
                          f"{config.batch_size} x {config.num_steps} needs at least {need} — "
                          "use a longer corpus or lower --batch-size / --num-steps")
    if config.val_fraction > 0 and eval_rows(len(val), config.batch_size, config.num_steps) < 1:
        raise RnnkitError(f"the validation slice has {len(val)} tokens, no full sequence of "
                          f"{config.num_steps} steps; raise --val-fraction or lower --num-steps")
    return corpus_vocab, train, val, test


def setup_run(config: TrainConfig, team: Team, vocab: Vocab | None = None) -> Run:
    """Corpus, model and optimizer for `config` on this rank's device (weights as initialised)."""
    if config.batch_size % team.world:
        raise UsageError(f"--batch-size {config.batch_size} does not split evenly over "
                         f"{team.world} processes")
    vocab, train, val, test = corpus_slices(config, vocab)
    check_size(len(vocab), config)
    model = build_model(len(vocab), config).to(team.device)
    optimizer = make_optimizer(model.parameters(), config.optimizer, config.lr,
                               config.weight_decay)
    return Run(config, vocab, train, val, test, model, team.wrap(model), optimizer,
               Autocast.for_config(config, team.device), team)
