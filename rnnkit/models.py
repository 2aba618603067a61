"""Character-level language models: the chapter's `RNNScratch` (the equations, one-hot inputs),
`GRUScratch` and `LSTMScratch` in the same style, and `TorchRNN`, the book's concise `RNNModel`
on `torch.nn.RNN`/`GRU`/`LSTM` + `nn.Linear`.

Every model is a `LanguageModel`: ids X (B, T) and a state tuple → logits (T, B, V) and the
new state tuple, plus the few methods its callers need (below), so that no caller asks what
kind of model it holds.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import bptt, fastloop
from .config import MODERN_CELLS
from .errors import UsageError

MAX_PARAMETERS = 1 << 30     # 4 GiB of fp32 weights (16 GiB with Adam): far beyond a char model


def _impl(impl: str, allowed: tuple[str, ...] = ("autograd", "bptt")) -> str:
    if impl not in allowed:
        raise ValueError(f"a scratch model's impl is one of {allowed}, not {impl!r}")
    return impl


def _normal(shape: tuple[int, ...], generator: torch.Generator | None) -> nn.Parameter:
    return nn.Parameter(torch.randn(shape, generator=generator) * 0.01)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


@dataclass
class Layer:
    """One recurrent layer as x W_x + b_x and h W_h + b_h, gates side by side: (in | H, G·H)."""
    W_x: np.ndarray
    W_h: np.ndarray
    b_x: np.ndarray
    b_h: np.ndarray


@dataclass
class CellLayers:
    """A network in `torch.nn`'s gate order and form, in numpy: what the lab traces and the
    ONNX graph is written from. `table` (V, in): an embedding, or one-hot rows."""
    cell: str
    table: np.ndarray
    layers: list[Layer]
    W_out: np.ndarray            # (H, V)
    b_out: np.ndarray            # (V,)


class LanguageModel(nn.Module):
    """The interface of every model kind. Training calls `begin_state` and `forward`;
    evaluation `prime`; generation `stepper`; the lab `trace` and `network`; export
    `network.cell_layers`; reports `mixture`."""

    mixture: dict | None = None     # {"n": n-gram order, figures} of a mixed-in n-gram model

    @property
    def network(self) -> "LanguageModel":
        """The recurrent network itself (a mixture's network; else the model)."""
        return self

    def begin_state(self, batch_size: int, device: torch.device | str | None = None) -> tuple:
        raise NotImplementedError

    def prime(self, state: tuple, ids: np.ndarray, starts: np.ndarray,
              before: np.ndarray | None = None) -> tuple:
        """`state` for rows that start at `starts` in `ids` (`before`: the ids before `ids`).
        A network starts every row from its zero state, having read nothing."""
        return state

    def stepper(self, n: int, device: torch.device | str = "cpu"):
        """A step for `n` streams: ids (n,) → logits (n, V), carrying each stream's state."""
        from .generate import ModelStepper
        return ModelStepper(self, n, device)

    def trace(self, ids: list[int]) -> dict:
        """One text read from the zero state, with every layer's states (`lab.trace`)."""
        from .lab import trace
        return trace(self.cell_layers(), ids)

    def scoring_steps(self, num_steps: int) -> int:
        """The window held-out text is read in (`train.held_out_logits`), for a model trained
        on windows of `num_steps`: the same, for a model that carries its state."""
        return num_steps

    def cell_layers(self) -> CellLayers:
        raise UsageError(f"a {type(self).__name__} has no recurrent layers to export")


class RNNScratch(LanguageModel):
    """H_t = tanh(X_t W_xh + H_{t-1} W_hh + b_h),  O_t = H_t W_hq + b_q  (X_t one-hot).

    `impl='autograd'` runs the book's loop step by step (the reference); `impl='bptt'` runs the
    hand-derived backpropagation through time of `bptt.py`, tested against it; `impl='compiled'`
    the same with every product in fasttrain.c (bptt's where `fastloop.cannot_train` says
    why).
    """

    def __init__(self, vocab_size: int, num_hiddens: int, *, impl: str = "autograd",
                 precision: str = "fp32", generator: torch.Generator | None = None):
        super().__init__()
        self.vocab_size, self.num_hiddens = vocab_size, num_hiddens
        self.impl, self.precision = _impl(impl, ("autograd", "bptt", "compiled")), precision
        V, H = vocab_size, num_hiddens
        self.W_xh = _normal((V, H), generator)
        self.W_hh = _normal((H, H), generator)
        self.b_h = nn.Parameter(torch.zeros(H))
        self.W_hq = _normal((H, V), generator)
        self.b_q = nn.Parameter(torch.zeros(V))

    def begin_state(self, batch_size: int, device: torch.device | str | None = None) -> tuple:
        return (torch.zeros(batch_size, self.num_hiddens, device=device or self.W_hh.device),)

    def forward(self, X: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
        if self.impl in ("bptt", "compiled"):
            compiled = self.impl == "compiled" and X.device.type == "cpu" and \
                fastloop.cannot_train(self.precision) is None
            return bptt.rnn_forward(X, state[0], self.W_xh, self.W_hh, self.b_h, self.W_hq,
                                    self.b_q, bf16=self.precision == "bf16", compiled=compiled)
        inputs = F.one_hot(X.T, self.vocab_size).to(self.W_xh.dtype)  # (T, B, V)
        H, = state                                                       # (B, H)
        outputs = []
        for X_t in inputs:                                               # (B, V)
            H = torch.tanh(X_t @ self.W_xh + H @ self.W_hh + self.b_h)   # (B, H)
            outputs.append(H @ self.W_hq + self.b_q)                     # (B, V)
        return torch.stack(outputs), (H,)                                # (T, B, V)

    def stepper(self, n: int, device: torch.device | str = "cpu"):
        if torch.device(device).type != "cpu":
            return super().stepper(n, device)
        from .generate import ScratchStepper     # the CPU fast path, tested against the model
        return ScratchStepper(self.W_xh, self.W_hh, self.b_h, self.W_hq, self.b_q,
                              self.begin_state(n, device)[0])

    def cell_layers(self) -> CellLayers:
        zero = np.zeros(self.num_hiddens, dtype=np.float32)
        return CellLayers("rnn", np.eye(self.vocab_size, dtype=np.float32),
                          [Layer(_np(self.W_xh), _np(self.W_hh), _np(self.b_h), zero)],
                          _np(self.W_hq), _np(self.b_q))


class GRUScratch(LanguageModel):
    """The gated recurrent unit in `torch.nn.GRU`'s exact form (so the two can be compared):

        R_t = σ(X_t W_xr + H_{t-1} W_hr + b_r)                  reset gate
        Z_t = σ(X_t W_xz + H_{t-1} W_hz + b_z)                  update gate
        N_t = tanh(X_t W_xn + b_xn + R_t ⊙ (H_{t-1} W_hn + b_hn))  candidate state
        H_t = (1 − Z_t) ⊙ N_t + Z_t ⊙ H_{t-1},   O_t = H_t W_hq + b_q
    """

    def __init__(self, vocab_size: int, num_hiddens: int, *, impl: str = "autograd",
                 generator: torch.Generator | None = None):
        super().__init__()
        self.vocab_size, self.num_hiddens, self.impl = vocab_size, num_hiddens, _impl(impl)
        V, H = vocab_size, num_hiddens
        for gate in ("r", "z", "n"):
            self.register_parameter(f"W_x{gate}", _normal((V, H), generator))
            self.register_parameter(f"W_h{gate}", _normal((H, H), generator))
        self.b_r, self.b_z = nn.Parameter(torch.zeros(H)), nn.Parameter(torch.zeros(H))
        self.b_xn, self.b_hn = nn.Parameter(torch.zeros(H)), nn.Parameter(torch.zeros(H))
        self.W_hq = _normal((H, V), generator)
        self.b_q = nn.Parameter(torch.zeros(V))

    def begin_state(self, batch_size: int, device: torch.device | str | None = None) -> tuple:
        return (torch.zeros(batch_size, self.num_hiddens, device=device or self.W_hq.device),)

    def forward(self, X: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
        if self.impl == "bptt":  # the hand-derived fast path, tested against the loop below
            return bptt.gru_forward(X, state, self)
        inputs = F.one_hot(X.T, self.vocab_size).to(self.W_hq.dtype)    # (T, B, V)
        H, = state                                                       # (B, H)
        outputs = []
        for X_t in inputs:                                               # (B, V)
            R = torch.sigmoid(X_t @ self.W_xr + H @ self.W_hr + self.b_r)              # (B, H)
            Z = torch.sigmoid(X_t @ self.W_xz + H @ self.W_hz + self.b_z)              # (B, H)
            N = torch.tanh(X_t @ self.W_xn + self.b_xn + R * (H @ self.W_hn + self.b_hn))  # (B, H)
            H = (1 - Z) * N + Z * H                                                     # (B, H)
            outputs.append(H @ self.W_hq + self.b_q)                                    # (B, V)
        return torch.stack(outputs), (H,)                                # (T, B, V)

    def cell_layers(self) -> CellLayers:
        zero = np.zeros(self.num_hiddens, dtype=np.float32)
        layer = Layer(np.concatenate([_np(self.W_xr), _np(self.W_xz), _np(self.W_xn)], 1),
                      np.concatenate([_np(self.W_hr), _np(self.W_hz), _np(self.W_hn)], 1),
                      np.concatenate([_np(self.b_r), _np(self.b_z), _np(self.b_xn)]),
                      np.concatenate([zero, zero, _np(self.b_hn)]))
        return CellLayers("gru", np.eye(self.vocab_size, dtype=np.float32), [layer],
                          _np(self.W_hq), _np(self.b_q))


class LSTMScratch(LanguageModel):
    """Long short-term memory in `torch.nn.LSTM`'s exact form:

        I_t = σ(X_t W_xi + H_{t-1} W_hi + b_i)    F_t = σ(X_t W_xf + H_{t-1} W_hf + b_f)
        G_t = tanh(X_t W_xc + H_{t-1} W_hc + b_c)  O_t = σ(X_t W_xo + H_{t-1} W_ho + b_o)
        C_t = F_t ⊙ C_{t-1} + I_t ⊙ G_t,   H_t = O_t ⊙ tanh(C_t),   Y_t = H_t W_hq + b_q
    """

    def __init__(self, vocab_size: int, num_hiddens: int, *, impl: str = "autograd",
                 generator: torch.Generator | None = None):
        super().__init__()
        self.vocab_size, self.num_hiddens, self.impl = vocab_size, num_hiddens, _impl(impl)
        V, H = vocab_size, num_hiddens
        for gate in ("i", "f", "c", "o"):
            self.register_parameter(f"W_x{gate}", _normal((V, H), generator))
            self.register_parameter(f"W_h{gate}", _normal((H, H), generator))
            self.register_parameter(f"b_{gate}", nn.Parameter(torch.zeros(H)))
        self.W_hq = _normal((H, V), generator)
        self.b_q = nn.Parameter(torch.zeros(V))

    def begin_state(self, batch_size: int, device: torch.device | str | None = None) -> tuple:
        device = device or self.W_hq.device
        return (torch.zeros(batch_size, self.num_hiddens, device=device),
                torch.zeros(batch_size, self.num_hiddens, device=device))

    def forward(self, X: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
        if self.impl == "bptt":  # the hand-derived fast path, tested against the loop below
            return bptt.lstm_forward(X, state, self)
        inputs = F.one_hot(X.T, self.vocab_size).to(self.W_hq.dtype)    # (T, B, V)
        H, C = state                                                     # (B, H) each
        outputs = []
        for X_t in inputs:                                               # (B, V)
            I = torch.sigmoid(X_t @ self.W_xi + H @ self.W_hi + self.b_i)  # (B, H)
            F_ = torch.sigmoid(X_t @ self.W_xf + H @ self.W_hf + self.b_f)  # (B, H)
            G = torch.tanh(X_t @ self.W_xc + H @ self.W_hc + self.b_c)     # (B, H)
            O = torch.sigmoid(X_t @ self.W_xo + H @ self.W_ho + self.b_o)  # (B, H)
            C = F_ * C + I * G                                             # (B, H)
            H = O * torch.tanh(C)                                          # (B, H)
            outputs.append(H @ self.W_hq + self.b_q)                       # (B, V)
        return torch.stack(outputs), (H, C)                              # (T, B, V)

    def cell_layers(self) -> CellLayers:
        gates = ("i", "f", "c", "o")                                     # torch.nn.LSTM's order
        layer = Layer(np.concatenate([_np(getattr(self, f"W_x{g}")) for g in gates], 1),
                      np.concatenate([_np(getattr(self, f"W_h{g}")) for g in gates], 1),
                      np.concatenate([_np(getattr(self, f"b_{g}")) for g in gates]),
                      np.zeros(4 * self.num_hiddens, dtype=np.float32))
        return CellLayers("lstm", np.eye(self.vocab_size, dtype=np.float32), [layer],
                          _np(self.W_hq), _np(self.b_q))


class TorchRNN(LanguageModel):
    """The book's concise model: one-hot (or a learned embedding) → `torch.nn.RNN`/`GRU`/`LSTM`
    (stacked, with dropout between layers) → dropout → `nn.Linear`."""

    LAYERS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}

    def __init__(self, vocab_size: int, num_hiddens: int, *, cell: str = "rnn",
                 num_layers: int = 1, dropout: float = 0.0, embed: int = 0, tie: bool = False):
        super().__init__()
        self.vocab_size, self.num_hiddens, self.cell = vocab_size, num_hiddens, cell
        self.embedding = nn.Embedding(vocab_size, embed) if embed else None
        self.rnn = self.LAYERS[cell](embed or vocab_size, num_hiddens, num_layers=num_layers,
                                     dropout=dropout if num_layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.linear = nn.Linear(num_hiddens, vocab_size)
        if tie:
            self.linear.weight = self.embedding.weight   # (V, H) both: one matrix, two uses

    def begin_state(self, batch_size: int, device: torch.device | str | None = None) -> tuple:
        device = device or self.linear.weight.device
        shape = (self.rnn.num_layers, batch_size, self.num_hiddens)
        n = 2 if self.cell == "lstm" else 1
        return tuple(torch.zeros(shape, device=device) for _ in range(n))

    def forward(self, X: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
        if self.embedding is not None:
            inputs = self.drop(self.embedding(X.T))                              # (T, B, E)
        else:
            inputs = F.one_hot(X.T, self.vocab_size).to(self.linear.weight.dtype)  # (T, B, V)
        Y, new = self.rnn(inputs, state if self.cell == "lstm" else state[0])   # (T, B, H)
        logits = self.linear(self.drop(Y))                                       # (T, B, V)
        return logits, (new if self.cell == "lstm" else (new,))

    def cell_layers(self) -> CellLayers:
        rnn = self.rnn
        layers = [Layer(_np(getattr(rnn, f"weight_ih_l{k}").T),
                        _np(getattr(rnn, f"weight_hh_l{k}").T),
                        _np(getattr(rnn, f"bias_ih_l{k}")), _np(getattr(rnn, f"bias_hh_l{k}")))
                  for k in range(rnn.num_layers)]
        table = (_np(self.embedding.weight) if self.embedding is not None
                 else np.eye(self.vocab_size, dtype=np.float32))
        return CellLayers(self.cell, table, layers, _np(self.linear.weight.T),
                          _np(self.linear.bias))


def build_model(vocab_size: int, config) -> LanguageModel:
    """The model a `TrainConfig` names, initialised from its seed (no global RNG touched)."""
    generator = torch.Generator().manual_seed(config.seed)
    if config.cell in MODERN_CELLS:         # torch modules, in their own files
        from .minrnn import MinRNN
        from .transformer import Transformer
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            if config.cell == "transformer":
                return Transformer(vocab_size, config.hidden, context=config.num_steps,
                                   num_layers=config.layers, dropout=config.dropout)
            return MinRNN(vocab_size, config.hidden, cell=config.cell, num_layers=config.layers,
                          dropout=config.dropout, embed=config.embed, tie=config.tie,
                          token_shift=config.token_shift)
    if config.impl == "torch":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)  # nn layers draw from the global RNG; keep it local
            return TorchRNN(vocab_size, config.hidden, cell=config.cell,
                            num_layers=config.layers, dropout=config.dropout,
                            embed=config.embed, tie=config.tie)
    if config.cell == "gru":
        return GRUScratch(vocab_size, config.hidden, impl=config.impl, generator=generator)
    if config.cell == "lstm":
        return LSTMScratch(vocab_size, config.hidden, impl=config.impl, generator=generator)
    # bptt runs its own bf16 matmuls; the other paths get precision from autocast (train.py)
    precision = config.precision if config.impl in ("bptt", "compiled") else "fp32"
    return RNNScratch(vocab_size, config.hidden, impl=config.impl, precision=precision,
                      generator=generator)


def count_parameters(vocab_size: int, config) -> int:
    """Parameters of the model `config` names, counted on the meta device (nothing allocated)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(vocab_size, config).parameters())


def size_bound(vocab_size: int, config) -> int:
    """More parameters than any kind has for these sizes: < 16 w² a layer (w the widest size,
    the LM head a layer) plus < 8 per vocabulary entry and position per unit of width."""
    w = max(config.hidden, config.embed or 0) + 1
    return 16 * (config.layers + 1) * w * w + 8 * (vocab_size + config.num_steps) * w


def check_size(vocab_size: int, config) -> None:
    """Refuses a model too large to allocate before anything is. Below the bound nothing is
    built: a meta-device build imports torch._dynamo, 1.7 s added to every command."""
    if size_bound(vocab_size, config) <= MAX_PARAMETERS:
        return
    n = count_parameters(vocab_size, config)
    if n > MAX_PARAMETERS:
        raise UsageError(f"the model would have {n:,} parameters (vocabulary {vocab_size:,}, "
                         f"--hidden {config.hidden}, --layers {config.layers}, --embed "
                         f"{config.embed}); the limit is {MAX_PARAMETERS:,}")
