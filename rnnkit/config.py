"""The one configuration of a training run: saved with every checkpoint, validated on load."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .errors import UsageError
from .text import CLEAN_MODES, TOKEN_MODES

# kinds of model that only torch's autograd runs (minrnn.py, transformer.py)
MODERN_CELLS = ("mingru", "minlstm", "transformer")
BOOK_PREFIX = "time traveller"      # the chapter's sample prefix
BOOK_MAX_TOKENS = 10_000            # the chapter trains on the book's first 10,000 characters
CHOICES = {"clean": CLEAN_MODES, "token": TOKEN_MODES,
           "cell": ("rnn", "gru", "lstm", "mingru", "minlstm", "transformer"),
           "impl": ("bptt", "autograd", "torch", "compiled"),
           "precision": ("fp32", "bf16", "fp16"), "sampling": ("sequential", "random"),
           "optimizer": ("sgd", "adam", "adamw"), "schedule": ("constant", "cosine", "plateau"),
           "end_on": ("best", "last")}
# What a resumed run may change: how long it goes on, where it runs, what it prints. Everything
# else decides what the weights become, so a resumed run keeps it.
RESUMABLE = ("epochs", "time_budget", "patience", "device", "sample_every", "prefix")
STDIN = "<stdin>"                   # `corpus` of a run read from standard input


@dataclass
class TrainConfig:
    # data
    corpus: str | None = None      # UTF-8 text file to train on; None = bundled The Time Machine
    corpus_sha1: str | None = None  # with corpus "<stdin>": the sha1 of the text read (cached)
    clean: str = "d2l"             # d2l (letters + space, lower case) | lower | none (keep all)
    token: str = "char"            # char | word
    min_freq: int = 0              # tokens rarer than this map to <unk>
    max_tokens: int | None = None  # first N tokens of the training slice; -1 = all;
                                   # None: 10,000 for the bundled book (the chapter), all of a file
    val_fraction: float = 0.1      # fraction held out for validation (before the test slice)
    test_fraction: float = 0.0     # last fraction of the corpus, held out for testing
    # model
    cell: str = "rnn"              # rnn (the chapter) | gru | lstm | mingru | minlstm (trained
                                   # in parallel) | transformer (nanoGPT's shape, context
                                   # --num-steps, width --hidden)
    impl: str = "bptt"             # bptt (hand-derived, fast) | autograd (the book's loop) | torch
                                   # | compiled (bptt's RNN, every product in fasttrain.c)
    hidden: int = 512              # hidden units H
    precision: str = "fp32"        # fp32 | bf16 (bptt: bf16 matmuls, fp32 state; else autocast)
                                   # | fp16 (CUDA autocast with a gradient scaler)
    layers: int = 1                # stacked recurrent layers (--impl torch for more than 1)
    dropout: float = 0.0           # dropout between layers and before the output (--impl torch)
    embed: int = 0                 # learned embedding size; 0 = one-hot inputs as the book
    tie: bool = False              # share embedding and output weights (needs embed == hidden)
    token_shift: bool = False      # mingru/minlstm: each cell also reads the step before
                                   # (RWKV's token shift, minrnn.MinBlock)
    ngram: int = 0                 # mix in a Kneser–Ney model of up to N tokens of context,
                                   # fitted on the validation slice at the end; 0 = off
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
    end_on: str | None = None      # the weights a run ends on: best (validation) | last;
                                   # None: last for the bundled book (as the chapter), else best
    # system and reporting
    device: str = "cpu"            # cpu | cuda | cuda:N | mps | auto (CUDA when present)
    prefix: str | None = None      # prefix of the samples printed while training; None: the
                                   # chapter's for the book, else the training slice's first words
    sample_every: int = 10         # print a sample every N epochs (0 = never)

    def validate(self) -> "TrainConfig":
        """Raise UsageError naming the first setting that is out of range."""
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed and not (name == "end_on" and value is None):
                raise UsageError(f"--{name.replace('_', '-')} must be one of "
                                  f"{', '.join(allowed)}, not {value!r}")
        for name in ("hidden", "batch_size", "num_steps"):
            if getattr(self, name) <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be positive")
        for name in ("lr", "clip"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise UsageError(f"--{name} must be a positive number")
        for f in dataclasses.fields(self):         # one rule: no setting is NaN or infinite
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise UsageError(f"--{f.name.replace('_', '-')} must be a finite number, not {v}")
        if self.epochs < 0:
            raise UsageError("--epochs must be 0 or more")
        if not 0 <= self.val_fraction < 1:
            raise UsageError("--val-fraction must be in [0, 1)")
        if not 0 <= self.test_fraction < 1 or self.val_fraction + self.test_fraction >= 1:
            raise UsageError("--test-fraction must be in [0, 1) and leave room for training")
        if self.layers < 1 or self.embed < 0 or not 0 <= self.dropout < 1:
            raise UsageError("--layers must be 1 or more, --embed 0 or more, --dropout in [0, 1)")
        if (self.layers > 1 or self.dropout > 0 or self.embed > 0) and self.impl != "torch":
            raise UsageError(f"--impl {self.impl} cannot run --layers, --dropout or --embed "
                              "(the from-scratch cells are one layer on one-hot inputs); use "
                              "--impl torch, or leave --impl out and rnnkit picks it")
        if self.cell in MODERN_CELLS and self.impl != "torch":
            raise UsageError(f"--cell {self.cell} runs with --impl torch, not --impl "
                             f"{self.impl}")
        if self.cell == "transformer" and (self.embed or self.tie):
            raise UsageError("--cell transformer is --hidden wide with its embedding tied to "
                             "its output layer: leave out --embed and --tie")
        if self.token_shift and self.cell not in ("mingru", "minlstm"):
            raise UsageError(f"--token-shift is for --cell mingru or minlstm, not {self.cell}")
        if self.tie and self.embed != self.hidden and self.cell not in MODERN_CELLS:
            raise UsageError("--tie needs --embed equal to --hidden")
        if self.weight_decay < 0 or self.warmup < 0 or self.patience < 0 or self.ngram < 0:
            raise UsageError("--weight-decay, --warmup, --patience and --ngram must be 0 or "
                              "more")
        if not (self.time_budget >= 0 and math.isfinite(self.time_budget)):
            raise UsageError("--time-budget must be 0 (none) or a number of seconds")
        if self.min_freq < 0 or self.sample_every < 0:
            raise UsageError("--min-freq and --sample-every must be 0 or more")
        if self.max_tokens is not None and (self.max_tokens == 0 or self.max_tokens < -1):
            raise UsageError("--max-tokens must be a positive number of tokens or -1 (all)")
        if not 0 <= self.seed < 1 << 63:
            raise UsageError("--seed must be in [0, 2^63)")
        if self.prefix is not None and not 0 < len(self.prefix) <= 10_000:
            raise UsageError("--prefix must hold 1 to 10,000 characters")
        self._check_sizes()
        self._check_precision()
        return self

    def _check_sizes(self) -> None:
        """Bound every size, so that no command line or config.json asks for absurd memory."""
        limits = {"hidden": 1 << 16, "batch_size": 1 << 20, "num_steps": 1 << 20,
                  "embed": 1 << 16, "layers": 64, "epochs": 10 ** 9, "warmup": 10 ** 9,
                  "patience": 10 ** 9, "sample_every": 10 ** 9, "min_freq": 1 << 62,
                  "max_tokens": 1 << 62, "ngram": 32}
        for name, limit in limits.items():
            if (getattr(self, name) or 0) > limit:
                raise UsageError(f"--{name.replace('_', '-')} is absurdly large (at most "
                                  f"{limit:,})")
        if self.batch_size * self.num_steps > 1 << 24:
            raise UsageError("--batch-size x --num-steps is absurdly large (at most 16,777,216 "
                              "tokens a batch)")
        if self.time_budget > 10 ** 9:
            raise UsageError("--time-budget is absurdly large")
        from .models import check_size
        check_size(1, self)           # the weights that do not depend on the vocabulary

    def _check_precision(self) -> None:
        if self.precision == "fp16" and not self.device.startswith("cuda"):
            raise UsageError("--precision fp16 needs --device cuda (use bf16 on a CPU)")
        if self.precision == "fp16" and self.impl == "bptt":
            raise UsageError("--precision fp16 runs with --impl autograd or torch")
        if self.impl == "compiled" and (self.cell != "rnn" or self.precision == "fp16"
                                        or not self.device.startswith("cpu")):
            raise UsageError("--impl compiled is for --cell rnn in fp32 or bf16 on the CPU; use "
                             "--impl bptt for the others")
        if self.cell != "rnn" and self.impl == "bptt" and self.precision == "bf16":
            raise UsageError("--precision bf16 with --impl bptt is for --cell rnn; use "
                              "--impl torch for bf16 gated cells")

    def token_cap(self) -> int:
        """`max_tokens` made concrete: given, else the book's 10,000 or all (-1) of a file."""
        return self.max_tokens or (BOOK_MAX_TOKENS if self.corpus is None else -1)

    def resolved(self, corpus_prefix: str) -> "TrainConfig":
        """A copy with every `None = automatic` setting made concrete: what config.json holds.
        `corpus_prefix`: the first words of the training slice (the default sample prefix)."""
        book = self.corpus is None
        return dataclasses.replace(
            self, max_tokens=self.token_cap(),
            end_on=self.end_on or ("last" if book else "best"),
            prefix=self.prefix or (BOOK_PREFIX if book else corpus_prefix))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Rebuild from JSON, refusing unknown keys and mistyped values (no eval, no pickle)."""
        if not isinstance(d, dict):
            raise UsageError("config must be a JSON object")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(d) - set(fields)
        if unknown:
            raise UsageError(f"config has unknown keys: {', '.join(sorted(unknown))}")
        for name, value in d.items():
            kind = fields[name].type.replace(" | None", "")
            ok = (value is None and "None" in fields[name].type) or {
                "str": isinstance(value, str),
                "float": isinstance(value, (int, float)) and not isinstance(value, bool),
                "int": isinstance(value, int) and not isinstance(value, bool),
                "bool": isinstance(value, bool)}[kind]
            if not ok:
                raise UsageError(f"config value {name}={value!r} has the wrong type")
        return cls(**{**cls().to_dict(), **d}).validate()

    def for_resume(self, changes: dict) -> "TrainConfig":
        """This (saved) config with the settings a resumed run may change; refuses any other
        setting that differs from the saved one, rather than silently ignoring it."""
        for name, value in changes.items():
            if name not in RESUMABLE and getattr(self, name) != value:
                raise UsageError(
                    f"--{name.replace('_', '-')} {value} contradicts the run's saved "
                    f"{getattr(self, name)}; a resumed run keeps its settings (it may change "
                    f"only {', '.join('--' + n.replace('_', '-') for n in RESUMABLE)}) — start "
                    "a new run to change it")
        return dataclasses.replace(self, **changes).validate()


# Named bundles of settings (`--preset`); explicit flags override them. `quality` also gets
# its sizes (width, dropout, window, batch...) from the corpus and the time budget: recipe.py.
PRESETS: dict[str, dict] = {
    # the chapter's run, exactly (the defaults above)
    "d2l": {},
    # the best validation loss per minute of a 2-core CPU on the user's own text (see README)
    "quality": dict(clean="none", max_tokens=-1, val_fraction=0.1, cell="lstm", impl="torch",
                    optimizer="adamw", lr=3e-3, warmup=50, schedule="cosine", clip=1.0,
                    epochs=1000, sample_every=0, end_on="best", ngram=8),
}
