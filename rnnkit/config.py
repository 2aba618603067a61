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
    val_fraction: float = 0.1      # fraction held out for validation (before the test slice)
    test_fraction: float = 0.0     # last fraction of the corpus, held out for testing
    # model
    cell: str = "rnn"              # rnn (the chapter) | gru | lstm
    impl: str = "bptt"             # bptt (hand-derived, fast) | autograd (the book's loop) | torch
    hidden: int = 512              # hidden units H
    precision: str = "fp32"        # fp32 | bf16 (bptt: bf16 matmuls, fp32 state; else autocast)
                                   # | fp16 (CUDA autocast with a gradient scaler)
    layers: int = 1                # stacked recurrent layers (--impl torch for more than 1)
    dropout: float = 0.0           # dropout between layers and before the output (--impl torch)
    embed: int = 0                 # learned embedding size; 0 = one-hot inputs as the book
    tie: bool = False              # share embedding and output weights (needs embed == hidden)
    # optimisation
    batch_size: int = 32           # rows per minibatch
    num_steps: int = 35            # time steps per row (the BPTT window)
    optimizer: str = "sgd"         # sgd (the book) | adam | adamw
    lr: float = 1.0                # peak learning rate
    weight_decay: float = 0.0      # decoupled weight decay (adamw) or L2 (sgd, adam)
    warmup: int = 0                # steps of linear learning-rate warm-up
    schedule: str = "constant"     # constant | cosine (to lr/10 at the end) | plateau (halve)
    clip: float = 1.0              # clip gradients to this global L2 norm
    epochs: int = 500              # passes over the training slice
    patience: int = 0              # stop after N epochs without a better validation loss; 0 = off
    time_budget: float = 0.0       # stop after this many seconds of training; 0 = no limit
    sampling: str = "sequential"   # sequential (state carried) | random (state reset per batch)
    seed: int = 0                  # seeds initialisation and batch order
    # system and reporting
    device: str = "cpu"            # cpu | cuda | cuda:N | mps | auto (CUDA when present)
    prefix: str = "time traveller"  # prefix of the samples printed while training
    sample_every: int = 10         # print a sample every N epochs (0 = never)

    def validate(self) -> "TrainConfig":
        """Raise RnnkitError naming the first setting that is out of range."""
        choices = {"clean": ("d2l", "lower", "none"), "token": ("char", "word"),
                   "cell": ("rnn", "gru", "lstm"), "impl": ("bptt", "autograd", "torch"),
                   "precision": ("fp32", "bf16", "fp16"), "sampling": ("sequential", "random"),
                   "optimizer": ("sgd", "adam", "adamw"),
                   "schedule": ("constant", "cosine", "plateau")}
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
        if not 0 <= self.test_fraction < 1 or self.val_fraction + self.test_fraction >= 1:
            raise RnnkitError("--test-fraction must be in [0, 1) and leave room for training")
        if self.layers < 1 or self.embed < 0 or not 0 <= self.dropout < 1:
            raise RnnkitError("--layers must be 1 or more, --embed 0 or more, --dropout in [0, 1)")
        if (self.layers > 1 or self.dropout > 0 or self.embed > 0) and self.impl != "torch":
            raise RnnkitError("--layers, --dropout and --embed run with --impl torch")
        if self.tie and self.embed != self.hidden:
            raise RnnkitError("--tie needs --embed equal to --hidden")
        if self.weight_decay < 0 or self.warmup < 0 or self.patience < 0:
            raise RnnkitError("--weight-decay, --warmup and --patience must be 0 or more")
        if not (self.time_budget >= 0 and math.isfinite(self.time_budget)):
            raise RnnkitError("--time-budget must be 0 (none) or a number of seconds")
        if self.hidden > 65536 or self.batch_size > 1 << 20 or self.num_steps > 1 << 20:
            raise RnnkitError("--hidden, --batch-size or --num-steps is absurdly large")
        if self.min_freq < 0 or self.sample_every < 0:
            raise RnnkitError("--min-freq and --sample-every must be 0 or more")
        if self.precision == "fp16" and not self.device.startswith("cuda"):
            raise RnnkitError("--precision fp16 needs --device cuda (use bf16 on a CPU)")
        if self.precision == "fp16" and self.impl == "bptt":
            raise RnnkitError("--precision fp16 runs with --impl autograd or torch")
        if self.cell != "rnn" and self.impl == "bptt" and self.precision == "bf16":
            raise RnnkitError("--precision bf16 with --impl bptt is for --cell rnn; use "
                              "--impl torch for bf16 gated cells")
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


# Named bundles of settings (`--preset`); explicit flags override them.
PRESETS: dict[str, dict] = {
    # the chapter's run, exactly (the defaults above)
    "d2l": {},
    # tuned for the best validation loss per minute of a 2-core CPU on any text (see README)
    "quality": dict(clean="none", max_tokens=-1, val_fraction=0.1, cell="lstm", impl="torch",
                    hidden=512, embed=64, dropout=0.0, optimizer="adamw", lr=3e-3,
                    weight_decay=0.01, warmup=50, schedule="cosine", clip=1.0, epochs=1000,
                    batch_size=64, num_steps=100, sample_every=0),
}
