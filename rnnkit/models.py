"""Character-level language models: the chapter's `RNNScratch` (the equations, one-hot inputs)
and `TorchRNN`, the book's concise `RNNModel` on `torch.nn.RNN` + `nn.Linear`.

Every model maps ids X (B, T) and a state tuple to logits (T, B, V) and the new state tuple.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import bptt

IMPLS = ("bptt", "autograd", "torch")
PRECISIONS = ("fp32", "bf16")


def _normal(shape: tuple[int, ...], generator: torch.Generator | None) -> nn.Parameter:
    return nn.Parameter(torch.randn(shape, generator=generator) * 0.01)


class RNNScratch(nn.Module):
    """H_t = tanh(X_t W_xh + H_{t-1} W_hh + b_h),  O_t = H_t W_hq + b_q  (X_t one-hot).

    `impl='autograd'` runs the book's loop step by step (the reference); `impl='bptt'` runs the
    hand-derived backpropagation through time of `bptt.py`, tested against it.
    """

    def __init__(self, vocab_size: int, num_hiddens: int, *, impl: str = "autograd",
                 precision: str = "fp32", generator: torch.Generator | None = None):
        super().__init__()
        if impl not in ("autograd", "bptt"):
            raise ValueError(f"RNNScratch impl must be 'autograd' or 'bptt', not {impl!r}")
        if precision != "fp32" and impl != "bptt":
            raise ValueError("--precision bf16 needs --impl bptt")
        self.vocab_size, self.num_hiddens = vocab_size, num_hiddens
        self.impl, self.precision = impl, precision
        V, H = vocab_size, num_hiddens
        self.W_xh = _normal((V, H), generator)
        self.W_hh = _normal((H, H), generator)
        self.b_h = nn.Parameter(torch.zeros(H))
        self.W_hq = _normal((H, V), generator)
        self.b_q = nn.Parameter(torch.zeros(V))

    def begin_state(self, batch_size: int, device: torch.device | str | None = None) -> tuple:
        return (torch.zeros(batch_size, self.num_hiddens, device=device or self.W_hh.device),)

    def forward(self, X: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
        if self.impl == "bptt":
            return bptt.rnn_forward(X, state[0], self.W_xh, self.W_hh, self.b_h, self.W_hq,
                                    self.b_q, bf16=self.precision == "bf16")
        inputs = F.one_hot(X.T, self.vocab_size).to(self.W_xh.dtype)  # (T, B, V)
        H, = state                                                       # (B, H)
        outputs = []
        for X_t in inputs:                                               # (B, V)
            H = torch.tanh(X_t @ self.W_xh + H @ self.W_hh + self.b_h)   # (B, H)
            outputs.append(H @ self.W_hq + self.b_q)                     # (B, V)
        return torch.stack(outputs), (H,)                                # (T, B, V)


class TorchRNN(nn.Module):
    """The book's concise model: one-hot → `torch.nn.RNN`/`GRU`/`LSTM` → `nn.Linear`."""

    LAYERS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}

    def __init__(self, vocab_size: int, num_hiddens: int, *, cell: str = "rnn",
                 num_layers: int = 1, dropout: float = 0.0):
        super().__init__()
        self.vocab_size, self.num_hiddens, self.cell = vocab_size, num_hiddens, cell
        self.rnn = self.LAYERS[cell](vocab_size, num_hiddens, num_layers=num_layers,
                                     dropout=dropout if num_layers > 1 else 0.0)
        self.linear = nn.Linear(num_hiddens, vocab_size)

    def begin_state(self, batch_size: int, device: torch.device | str | None = None) -> tuple:
        device = device or self.linear.weight.device
        shape = (self.rnn.num_layers, batch_size, self.num_hiddens)
        n = 2 if self.cell == "lstm" else 1
        return tuple(torch.zeros(shape, device=device) for _ in range(n))

    def forward(self, X: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
        inputs = F.one_hot(X.T, self.vocab_size).to(self.linear.weight.dtype)  # (T, B, V)
        Y, new = self.rnn(inputs, state if self.cell == "lstm" else state[0])  # (T, B, H)
        return self.linear(Y), (new if self.cell == "lstm" else (new,))          # (T, B, V)


def build_model(vocab_size: int, num_hiddens: int, *, cell: str = "rnn", impl: str = "bptt",
                precision: str = "fp32", seed: int = 0) -> nn.Module:
    """The model a config names, initialised from `seed` (reproducible, no global RNG)."""
    generator = torch.Generator().manual_seed(seed)
    if impl == "torch":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # nn.RNN draws from the global RNG; keep it local
            return TorchRNN(vocab_size, num_hiddens, cell=cell)
    if cell != "rnn":
        raise ValueError(f"--cell {cell} has no from-scratch model yet; use --impl torch")
    return RNNScratch(vocab_size, num_hiddens, impl=impl, precision=precision,
                      generator=generator)
