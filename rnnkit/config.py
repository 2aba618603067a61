"""The one configuration of a training run: saved with every checkpoint, validated on load."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .errors import UsageError as RnnkitError


@dataclass
class TrainConfig:
    # data
    corpus: str | None = None      # UTF-8 text file to train on; None = bundled The Time Machine
    clean: str = "d2l"             # d2l (letters + space, lower case) | lower | none (keep all)
    token: str = "char"            # char | word
    min_freq: int = 0              # tokens rarer than this map to <unk>
    max_tokens: int = 10000        # first N tokens of the training slice; -1 = all (book: 10,000)
    val_fraction: float = 0.1      # last fraction of the corpus, held out for validation
    # model
    cell: str = "rnn"              # rnn (the chapter); gru | lstm with --impl torch
    impl: str = "bptt"             # bptt (hand-derived, fast) | autograd (the book's loop) | torch
    hidden: int = 512              # hidden units H
    precision: str = "fp32"        # fp32 | bf16 (bf16 matmuls, fp32 state; --impl bptt only)
    # optimisation
    batch_size: int = 32           # rows per minibatch
    num_steps: int = 35            # time steps per row (the BPTT window)
    lr: float = 1.0                # SGD learning rate
    clip: float = 1.0              # clip gradients to this global L2 norm
    epochs: int = 500              # passes over the training slice
    sampling: str = "sequential"   # sequential (state carried) | random (state reset per batch)
    seed: int = 0                  # seeds initialisation and batch order
    # system and reporting
    device: str = "cpu"            # cpu | cuda | cuda:N
    prefix: str = "time traveller"  # prefix of the samples printed while training
    sample_every: int = 10         # print a sample every N epochs (0 = never)

    def validate(self) -> "TrainConfig":
        """Raise RnnkitError naming the first setting that is out of range."""
        choices = {"clean": ("d2l", "lower", "none"), "token": ("char", "word"),
                   "cell": ("rnn", "gru", "lstm"), "impl": ("bptt", "autograd", "torch"),
                   "precision": ("fp32", "bf16"), "sampling": ("sequential", "random")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise RnnkitError(f"--{name.replace('_', '-')} must be one of "
                                  f"{', '.join(allowed)}, not {getattr(self, name)!r}")
        for name in ("hidden", "batch_size", "num_steps"):
            if getattr(self, name) <= 0:
                raise RnnkitError(f"--{name.replace('_', '-')} must be positive")
        for name in ("lr", "clip"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise RnnkitError(f"--{name} must be a positive number")
        if self.epochs < 0:
            raise RnnkitError("--epochs must be 0 or more")
        if not 0 <= self.val_fraction < 1:
            raise RnnkitError("--val-fraction must be in [0, 1)")
        if self.hidden > 65536 or self.batch_size > 1 << 20 or self.num_steps > 1 << 20:
            raise RnnkitError("--hidden, --batch-size or --num-steps is absurdly large")
        if self.min_freq < 0 or self.sample_every < 0:
            raise RnnkitError("--min-freq and --sample-every must be 0 or more")
        if self.precision == "bf16" and self.impl != "bptt":
            raise RnnkitError("--precision bf16 needs --impl bptt")
        if self.cell != "rnn" and self.impl != "torch":
            raise RnnkitError(f"--cell {self.cell} runs with --impl torch")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Rebuild from JSON, refusing unknown keys and mistyped values (no eval, no pickle)."""
        if not isinstance(d, dict):
            raise RnnkitError("config must be a JSON object")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(d) - set(fields)
        if unknown:
            raise RnnkitError(f"config has unknown keys: {', '.join(sorted(unknown))}")
        defaults = cls()
        for name, value in d.items():
            want = type(getattr(defaults, name))
            if name == "corpus":
                ok = value is None or isinstance(value, str)
            elif want is float:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            else:
                ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
            if not ok:
                raise RnnkitError(f"config value {name}={value!r} has the wrong type")
        return cls(**{**defaults.to_dict(), **d}).validate()
