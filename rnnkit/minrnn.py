"""minGRU and minLSTM (Feng et al., "Were RNNs All We Needed?", 2024): the GRU and LSTM with the
hidden state taken out of their gates, so that a whole window trains at once — one matrix product
per layer for every gate of every step, then a scan over time — while generation stays a cheap
recurrent step.

    minGRU:   z_t = σ(x_t W_z + b_z)   h̃_t = g(x_t W_h + b_h)
              h_t = (1 − z_t) ⊙ h_{t−1} + z_t ⊙ h̃_t
    minLSTM:  f_t = σ(x_t W_f + b_f)   i_t = σ(x_t W_i + b_i)   h̃_t = g(x_t W_h + b_h)
              f'_t, i'_t = f_t / (f_t + i_t), i_t / (f_t + i_t)
              h_t = f'_t ⊙ h_{t−1} + i'_t ⊙ h̃_t

g(x) = x + ½ for x ≥ 0, σ(x) below keeps every state positive, so that the scan runs in log space
(the paper's appendix B.3): h_t = a_t h_{t−1} + b_t over a window is
    log h_t = a*_t + logcumsumexp_{k≤t}(log b_k − a*_k),  a*_t = Σ_{k≤t} log a_k   (Heinsen, 2023)
plus the carried state's share, exp(a*_t) ⊙ h_0. `sequential` is the recurrence itself, step by
step: the reference the others are tested against, and what evaluation, generation, the lab and
the ONNX graph run.

Training computes every gate of a window in one matrix product, then the recurrence: on a GPU by
the scan, parallel over time; on a CPU by fasttrain.c (`CompiledLinear` for the products,
`CompiledMinRecurrence` for coefficients, recurrence and gradient in one pass a row), else by
`linear_recurrence`, T in-place steps each as wide as the batch with a hand-derived backward —
each measured faster here than the scan's log, exp and logcumsumexp passes (see README
"Recurrences of today").

The language model around the cells follows the paper's language-modelling setup as
lucidrains/minGRU-pytorch (`minLM.py`) writes it: token embedding, then per layer a pre-norm
residual block x += minRNN(RMSNorm(x)) and x += MLP(RMSNorm(x)) (4× wide, GELU), a final
RMSNorm and the output layer. Its optional causal convolution (a padding mistake in it leaked
the future: minGRU-pytorch issue #3) is here a width-2 one, RWKV's token shift (`--token-shift`,
`MinBlock`): its cache is one vector a layer, carried in the state beside h. Measured on Tiny
Shakespeare (minGRU 3×128, 3 epochs): 4.54 validation perplexity against 4.77 without; a
width-4 convolution, tried, 4.57 (README "Recurrences of today").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import fastloop
from .models import LanguageModel

GATES = {"mingru": ("z",), "minlstm": ("f", "i")}    # what the lab shows beside h


def g(x: torch.Tensor) -> torch.Tensor:
    """x + ½ for x ≥ 0, σ(x) below: positive, continuous, linear for large x."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def log_g(x: torch.Tensor) -> torch.Tensor:
    """log g(x), computed without taking the log of a sigmoid."""
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -F.softplus(-x))


def scan_log(log_a: torch.Tensor, log_b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """h_t = a_t h_{t−1} + b_t for t = 1..T at once, from log a, log b (B, T, H) and h0 (B, H);
    returns h (B, T, H). Run in float64: a* grows like −t, and the two large terms of log h must
    cancel to fp32 precision."""
    log_a, log_b = log_a.double(), log_b.double()
    a_star = torch.cumsum(log_a, dim=1)                                   # (B, T, H) log Π a
    log_h = a_star + torch.logcumsumexp(log_b - a_star, dim=1)           # (B, T, H) from h0 = 0
    return (torch.exp(log_h) + torch.exp(a_star) * h0.double()[:, None]).float()  # + h0's share


class LinearRecurrence(torch.autograd.Function):
    """h_t = a_t ⊙ h_{t−1} + b_t over a window, in place, and its gradient by hand:
    dh_t = ∂L/∂h_t + a_{t+1} ⊙ dh_{t+1},  da_t = dh_t ⊙ h_{t−1},  db_t = dh_t,
    dh_0 = a_1 ⊙ dh_1."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        a, b = a.transpose(0, 1).contiguous(), b.transpose(0, 1).contiguous()   # (T, B, H)
        h = torch.empty_like(b)                                           # (T, B, H)
        previous = h0                                                     # (B, H)
        for t in range(a.shape[0]):
            previous = torch.addcmul(b[t], a[t], previous, out=h[t])      # (B, H) h_t
        ctx.save_for_backward(a, h, h0)
        return h.transpose(0, 1)                                          # (B, T, H)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        a, h, h0 = ctx.saved_tensors                                      # (T, B, H), …, (B, H)
        dh = grad.transpose(0, 1).contiguous()                            # (T, B, H)
        for t in range(a.shape[0] - 2, -1, -1):
            dh[t].addcmul_(a[t + 1], dh[t + 1])                           # (B, H) dh_t
        da = torch.empty_like(a)                                          # (T, B, H)
        torch.mul(dh[1:], h[:-1], out=da[1:])
        torch.mul(dh[0], h0, out=da[0])
        return da.transpose(0, 1), dh.transpose(0, 1), dh[0] * a[0]


class CompiledMinRecurrence(torch.autograd.Function):
    """A window of minGRU (or minLSTM) from the gates' pre-activations (B, T, G·H) and h0 (B, H)
    to every state (B, T, H), coefficients and recurrence fused in fasttrain.c, and their
    gradient; a row of the batch a thread. Tested against `MinCell.sequential`."""

    @staticmethod
    def forward(ctx, gates: torch.Tensor, h0: torch.Tensor, lstm: bool) -> torch.Tensor:
        h = fastloop.min_forward(lstm, gates, h0)                         # (B, T, H)
        ctx.save_for_backward(gates, h0, h)
        ctx.lstm = lstm
        return h

    @staticmethod
    def backward(ctx, dh: torch.Tensor):
        gates, h0, h = ctx.saved_tensors
        dgates, dh0 = fastloop.min_backward(ctx.lstm, gates, h0, h, dh)
        return dgates, dh0, None


class CompiledLinear(torch.autograd.Function):
    """x Wᵀ + b of an `nn.Linear` over (…, in) → (…, out), its three products in fasttrain.c
    (twice MKL's speed at a window's shapes here)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).contiguous()                    # (M, in)
        y = fastloop.gemm_rows(flat, fastloop.pack_panels(W.t()), W.shape[0],
                               None if b is None else b.detach())
        ctx.save_for_backward(flat, W)
        ctx.shape, ctx.bias = x.shape, b is not None
        return y.reshape(*x.shape[:-1], W.shape[0])                       # (…, out)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        flat, W = ctx.saved_tensors
        dflat = dy.reshape(-1, W.shape[0]).contiguous()                   # (M, out)
        dx = fastloop.gemm_rows(dflat, fastloop.pack_panels(W), W.shape[1]).reshape(ctx.shape)
        db = dflat.sum(0) if ctx.bias else None
        return dx, fastloop.gemm_xty(dflat, flat), db                    # dW = dyᵀ x


def compiled_training(x: torch.Tensor) -> bool:
    """Whether x's products run in fasttrain.c: fp32 on the CPU, with gradients, and built.
    Training then keeps torch on one thread (`perf.training_threads`)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and torch.is_grad_enabled()
            and fastloop.library() is not None)


def linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """layer(x), an `nn.Linear` through `CompiledLinear` while training on the CPU."""
    if isinstance(layer, nn.Linear) and compiled_training(x):
        return CompiledLinear.apply(x, layer.weight, layer.bias)
    return layer(x)


def linear_recurrence(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """h (B, T, H) of h_t = a_t h_{t−1} + b_t from a, b (B, T, H) and h0 (B, H)."""
    return LinearRecurrence.apply(a.float(), b.float(), h0.float())


class MinCell(nn.Module):
    """One minGRU or minLSTM layer, `dim` in and out, a state of `hidden` units. Every gate of
    every step comes from one matrix product of the inputs (B, T, dim) → (B, T, G·hidden)."""

    def __init__(self, kind: str, dim: int, hidden: int):
        super().__init__()
        self.kind, self.hidden = kind, hidden
        self.to_gates = nn.Linear(dim, (len(GATES[kind]) + 1) * hidden)  # gates, then h̃
        self.out = nn.Linear(hidden, dim, bias=False) if hidden != dim else nn.Identity()

    def coefficients(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b) (B, T, H) of h_t = a_t h_{t−1} + b_t, as the cell's equations give them."""
        parts = self.to_gates(x).float().chunk(len(GATES[self.kind]) + 1, dim=-1)
        if self.kind == "mingru":
            k, h_tilde = parts
            z = torch.sigmoid(k)                                          # (B, T, H)
            return 1 - z, z * g(h_tilde)
        f_, i_, h_tilde = parts
        f, i = torch.sigmoid(f_), torch.sigmoid(i_)                       # (B, T, H) each
        return f / (f + i), i / (f + i) * g(h_tilde)                      # f', i' h̃

    def log_coefficients(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log a, log b) (B, T, H): the same coefficients, in log space for the scan."""
        parts = self.to_gates(x).float().chunk(len(GATES[self.kind]) + 1, dim=-1)
        if self.kind == "mingru":
            k, h_tilde = parts
            return -F.softplus(k), -F.softplus(-k) + log_g(h_tilde)      # log(1−z), log z h̃
        f_, i_, h_tilde = parts
        diff = F.softplus(-f_) - F.softplus(-i_)                          # log σ(i) − log σ(f)
        return -F.softplus(diff), -F.softplus(-diff) + log_g(h_tilde)     # log f', log i' h̃

    def sequential(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The recurrence step by step: x (B, T, dim), h (B, H) → states (B, T, H)."""
        a, b = self.coefficients(x)                                       # (B, T, H) each
        states = []
        for t in range(x.shape[1]):
            h = a[:, t] * h + b[:, t]                                     # (B, H) h_t
            states.append(h)
        return torch.stack(states, dim=1)                                 # (B, T, H)

    def scan(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The same states (B, T, H), every step at once by the log-space scan."""
        return scan_log(*self.log_coefficients(x), h)

    def train_states(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The same states (B, T, H) the fastest way for the device (module docstring)."""
        if x.is_cuda:
            return self.scan(x, h)
        if compiled_training(x):
            gates = linear(self.to_gates, x)                              # (B, T, G·H)
            return CompiledMinRecurrence.apply(gates, h.float(), self.kind == "minlstm")
        return linear_recurrence(*self.coefficients(x), h)

    def gates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The gates (B, T, H) by name, as the lab shows them."""
        parts = torch.sigmoid(self.to_gates(x).float()).chunk(len(GATES[self.kind]) + 1, dim=-1)
        return dict(zip(GATES[self.kind], parts))


class MLP(nn.Module):
    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.up, self.down = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(linear(self.down, F.gelu(linear(self.up, x))))


class MinBlock(nn.Module):
    """x += minRNN(shift(RMSNorm(x))); x += MLP(RMSNorm(x)). With `token_shift` the cell reads
    u_t + μ ⊙ (u_{t−1} − u_t), u = RMSNorm(x), μ learned per channel (RWKV's token shift, Peng et
    al., 2023): every gate sees the step before as well, which the state alone carries only
    through a diagonal decay. Without it, the cell reads u_t (the paper's block)."""

    def __init__(self, kind: str, dim: int, hidden: int, dropout: float,
                 token_shift: bool = False):
        super().__init__()
        self.norm1, self.cell = nn.RMSNorm(dim), MinCell(kind, dim, hidden)
        self.norm2, self.mlp = nn.RMSNorm(dim), MLP(dim, dropout)
        self.drop = nn.Dropout(dropout)
        # μ spread from 0 to 1 over the channels, as RWKV starts it: some read the step, some
        # the one before, most a mix
        self.mu = nn.Parameter(torch.linspace(0, 1, dim)) if token_shift else None

    def cell_input(self, x: torch.Tensor, previous: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the cell reads (B, T, dim) from x (B, T, dim) and the window before's last u
        (B, dim); and this window's last u, carried to the next (None without the shift)."""
        u = self.norm1(x)                                                 # (B, T, dim)
        if self.mu is None:
            return u, None
        before = torch.cat([previous[:, None].to(u.dtype), u[:, :-1]], dim=1)  # (B, T, dim) u_{t−1}
        return u + self.mu * (before - u), u[:, -1].float()

    def forward(self, x: torch.Tensor, h: torch.Tensor, previous: torch.Tensor | None,
                training: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """x (B, T, dim), h (B, H), previous u (B, dim) or None → x (B, T, dim), every step's
        state (B, T, H), the last u (B, dim) or None."""
        u, last = self.cell_input(x, previous)                            # (B, T, dim)
        states = self.cell.train_states(u, h) if training else self.cell.sequential(u, h)
        x = x + self.drop(linear(self.cell.out, states.to(x.dtype)))     # (B, T, dim)
        return x + self.mlp(self.norm2(x)), states, last


class MinRNN(LanguageModel):
    """Stacked minGRU/minLSTM blocks on a learned embedding: ids (B, T) and a state
    ((layers, B, H),) — with the token shift ((layers, B, H), (layers, B, dim)), each block's
    last u — → logits (T, B, V). Training scans each window in parallel; evaluation and
    generation (`training` off, or one step) run the recurrence step by step."""

    def __init__(self, vocab_size: int, num_hiddens: int, *, cell: str = "mingru",
                 num_layers: int = 1, dropout: float = 0.0, embed: int = 0, tie: bool = False,
                 token_shift: bool = False):
        super().__init__()
        self.vocab_size, self.num_hiddens, self.cell = vocab_size, num_hiddens, cell
        dim = embed or num_hiddens
        self.embedding = nn.Embedding(vocab_size, dim)
        self.drop = nn.Dropout(dropout)
        self.dim, self.token_shift = dim, token_shift
        self.blocks = nn.ModuleList(MinBlock(cell, dim, num_hiddens, dropout, token_shift)
                                    for _ in range(num_layers))
        self.norm = nn.RMSNorm(dim)
        self.linear = nn.Linear(dim, vocab_size)
        if tie:
            self.linear.weight = self.embedding.weight   # (V, dim) both: one matrix, two uses

    def begin_state(self, batch_size: int, device: torch.device | str | None = None) -> tuple:
        device = device or self.linear.weight.device
        h = torch.zeros(len(self.blocks), batch_size, self.num_hiddens, device=device)
        if self.token_shift:
            return h, torch.zeros(len(self.blocks), batch_size, self.dim, device=device)
        return (h,)

    def forward(self, X: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
        training = self.training and X.shape[1] > 1
        x = self.drop(self.embedding(X))                                  # (B, T, dim)
        previous = state[1] if self.token_shift else [None] * len(self.blocks)
        last_h, last_u = [], []
        for block, h, u in zip(self.blocks, state[0], previous):
            x, states, u = block(x, h, u, training)                       # (B, T, dim)
            last_h.append(states[:, -1])                                  # (B, H)
            last_u.append(u)                                              # (B, dim) or None
        logits = linear(self.linear, self.norm(x))                        # (B, T, V)
        new = (torch.stack(last_h), torch.stack(last_u)) if self.token_shift else \
            (torch.stack(last_h),)
        return logits.transpose(0, 1), new                                # (T, B, V)

    @torch.no_grad()
    def trace(self, ids: list[int]) -> dict:
        """One text read step by step from the zero state, with every layer's h and gates."""
        X = torch.as_tensor(ids, dtype=torch.long, device=self.linear.weight.device)[None]
        was_training = self.training
        self.eval()
        try:
            x, record = self.embedding(X), []                             # (1, T, dim)
            for block in self.blocks:
                u0 = torch.zeros(1, self.dim, device=x.device)
                gates = block.cell.gates(block.cell_input(x, u0)[0])
                x, states, _ = block(x, torch.zeros(1, self.num_hiddens, device=x.device), u0,
                                     False)
                record.append({name: t[0].float().cpu().numpy()
                               for name, t in {"h": states, **gates}.items()})
            logits = self.linear(self.norm(x))[0].float().cpu().numpy()  # (T, V)
        finally:
            self.train(was_training)
        return {"logits": logits, "layers": record, "cell": self.cell}

