"""The yardstick: a decoder-only causal transformer of nanoGPT's shape (karpathy/nanoGPT
`model.py`): token + learned position embeddings, pre-norm blocks x += Attn(LN(x)),
x += MLP(LN(x)) with a 4× GELU MLP, a final LayerNorm and an output layer tied to the token
embedding; its context is the training window (`--num-steps`).

As a `LanguageModel` its state is the text read so far — the last ids (B, context − 1), −1 where
there is none yet — so
that held-out text is read window by window with the context carried (`scoring_steps`: half a
window at a time, each scored token seeing at least half a window). Generation keeps keys and
values (`CachedStepper`); when a stream's context is full, it keeps the last half and recomputes
their keys and values at their new positions (`windowed_logits` is the same, recomputed).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import UsageError
from .models import LanguageModel

HEAD_SIZE, MAX_HEADS = 32, 6     # nanoGPT's char models: 128 wide, 4 heads; 384 wide, 6 heads


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """q, k, v (B, heads, T, d) of x (B, T, dim)."""
        B, T, C = x.shape
        return tuple(t.view(B, T, self.heads, C // self.heads).transpose(1, 2)
                     for t in self.qkv(x).split(C, dim=2))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, dim) → the attention's output (B, T, dim), and k, v (B, heads, T, d).
        `mask` (B, 1, T, T): which keys each query sees, where not simply the causal ones."""
        q, k, v = self.split(x)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.drop(self.proj(y.transpose(1, 2).reshape(x.shape))), k, v


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(dim), SelfAttention(dim, heads, dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.up, self.down = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.drop = nn.Dropout(dropout)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.down(F.gelu(self.up(self.ln2(x)))))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, dim) → x (B, T, dim), and this block's keys and values (B, heads, T, d)."""
        y, k, v = self.attn(self.ln1(x), mask)
        x = x + y
        return x + self.mlp(x), k, v


class Transformer(LanguageModel):
    """ids (B, T) and the ids before them ((B, L),) → logits (T, B, V) and the last ids read."""

    cell = "transformer"

    def __init__(self, vocab_size: int, num_hiddens: int, *, context: int, num_layers: int = 1,
                 dropout: float = 0.0, heads: int | None = None):
        super().__init__()
        self.vocab_size, self.num_hiddens, self.context = vocab_size, num_hiddens, context
        heads = heads or max(1, min(MAX_HEADS, num_hiddens // HEAD_SIZE))
        while num_hiddens % heads:
            heads -= 1
        self.heads = heads
        self.wte, self.wpe = nn.Embedding(vocab_size, num_hiddens), nn.Embedding(context,
                                                                                 num_hiddens)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(num_hiddens, heads, dropout)
                                    for _ in range(num_layers))
        self.ln_f = nn.LayerNorm(num_hiddens)
        self.lm_head = nn.Linear(num_hiddens, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight        # tied, as nanoGPT
        for name, p in self.named_parameters():      # nanoGPT's initialisation
            if name.endswith("proj.weight") or name.endswith("down.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * num_layers))
            elif p.dim() == 2:
                nn.init.normal_(p, std=0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def begin_state(self, batch_size: int, device: torch.device | str | None = None) -> tuple:
        device = device or self.lm_head.weight.device
        return (torch.full((batch_size, self.context - 1), -1, dtype=torch.long, device=device),)

    def scoring_steps(self, num_steps: int) -> int:
        return max(1, self.context // 2)

    def prime(self, state: tuple, ids: np.ndarray, starts: np.ndarray,
              before: np.ndarray | None = None) -> tuple:
        """The context - 1 ids before each row's start; −1 where the text has not begun."""
        from .ngram import preceding
        history = preceding(ids, starts, self.context - 1, before) - 1       # (B, context - 1)
        return (history.to(state[0].device),)

    def hidden(self, ids: torch.Tensor) -> tuple[torch.Tensor, list]:
        """The final states (B, T, dim) of ids (B, T ≤ context) read from position 0, and each
        block's keys and values. Ids −1 on the left are no token (text before the start):
        nothing attends to them, and the row's first token is at position 0."""
        positions = torch.arange(ids.shape[1], device=ids.device)[None]     # (1, T)
        mask, none = None, ids < 0
        if none.any():                              # causal, without the keys that are none
            positions = (positions - none.sum(1, keepdim=True)).clamp(min=0)  # (B, T)
            T = ids.shape[1]
            causal = torch.ones(T, T, dtype=torch.bool, device=ids.device).tril()
            mask = (causal & ~none[:, None, :]) | torch.eye(T, dtype=torch.bool,
                                                            device=ids.device)
            mask = mask[:, None]                                             # (B, 1, T, T)
        x = self.drop(self.wte(ids.clamp(min=0)) + self.wpe(positions))     # (B, T, dim)
        cache = []
        for block in self.blocks:
            x, k, v = block(x, mask)
            cache.append((k, v))
        return self.ln_f(x), cache

    def forward(self, X: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
        B, T = X.shape
        if T > self.context:
            raise ValueError(f"a window of {T} ids is longer than the context ({self.context})")
        seq = torch.cat([state[0], X], dim=1)[:, -self.context:]            # (B, ≤ context)
        x, _ = self.hidden(seq)
        logits = self.lm_head(x[:, -T:])                                     # (B, T, V)
        return logits.transpose(0, 1), (seq[:, seq.shape[1] - (self.context - 1):],)

    def stepper(self, n: int, device: torch.device | str = "cpu"):
        return CachedStepper(self, n, device)

    def cell_layers(self):
        raise UsageError("a transformer run is not exported to ONNX (its step needs a key/value "
                         "cache that grows); export a recurrent run: rnn, gru, lstm, mingru or "
                         "minlstm")

    def trace(self, ids: list[int]) -> dict:
        """The logits (T, V) along a text, each token read with at least half a context before
        it (sliding windows); no recurrent states to show."""
        X = torch.as_tensor(ids, dtype=torch.long, device=self.lm_head.weight.device)
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                logits = sliding_logits(self, X).float().cpu().numpy()
        finally:
            self.train(was_training)
        return {"logits": logits, "layers": [], "cell": self.cell}


@torch.no_grad()
def sliding_logits(model: Transformer, ids: torch.Tensor) -> torch.Tensor:
    """Logits (T, V) for ids (T,): the first window whole, then half a window at a time, each
    read after the half window before it."""
    ctx, step = model.context, max(1, model.context // 2)
    out = [model.lm_head(model.hidden(ids[None, :ctx])[0][0])]
    for start in range(ctx, len(ids), step):
        window = ids[start + step - ctx:start + step][None]                  # (1, ≤ ctx)
        new = min(step, len(ids) - start)
        out.append(model.lm_head(model.hidden(window)[0][0, -new:]))
    return torch.cat(out)


@torch.no_grad()
def windowed_logits(model: Transformer, ids: list[int]) -> torch.Tensor:
    """The reference for `CachedStepper`: logits (T, V) after each of ids, each recomputed from
    scratch over the stream's window (its last ids since the window was last cut to half)."""
    keep, window, out = model.context - model.context // 2, [], []
    for i in ids:
        if len(window) == model.context:
            window = window[-keep:]
        window.append(i)
        x, _ = model.hidden(torch.tensor([window], device=model.lm_head.weight.device))
        out.append(model.lm_head(x[0, -1]))
    return torch.stack(out)


class CachedStepper:
    """Generation for `n` streams with each block's keys and values kept: one new token per
    stream a step, attending to the stream's cache. Streams may be at different lengths (the
    lab starts them at different times): each row has its own length and positions."""

    def __init__(self, model: Transformer, n: int, device: torch.device | str = "cpu"):
        self.model, self.n = model, n
        m, ctx = model, model.context
        d = m.num_hiddens // m.heads
        shape = (len(m.blocks), n, m.heads, ctx, d)
        self.k = torch.zeros(shape, device=device)                           # (L, n, h, ctx, d)
        self.v = torch.zeros(shape, device=device)
        self.ids = torch.zeros(n, ctx, dtype=torch.long, device=device)      # each window's ids
        self.length = torch.zeros(n, dtype=torch.long, device=device)        # ids in each window

    def _refill(self, rows: torch.Tensor) -> None:
        """Rows whose window is full keep its last half, their keys and values recomputed at
        positions 0…"""
        keep = self.model.context - self.model.context // 2
        kept = self.ids[rows, -keep:]                                        # (r, keep)
        _, cache = self.model.hidden(kept)
        for layer, (k, v) in enumerate(cache):
            self.k[layer, rows, :, :keep] = k
            self.v[layer, rows, :, :keep] = v
        self.ids[rows, :keep] = kept
        self.length[rows] = keep

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        m = self.model
        full = (self.length == m.context).nonzero()[:, 0]
        if len(full):
            self._refill(full)
        rows, pos = torch.arange(self.n, device=ids.device), self.length       # (n,), (n,)
        self.ids[rows, pos] = ids
        x = m.wte(ids) + m.wpe(pos)                                           # (n, dim)
        seen = torch.arange(m.context, device=ids.device)[None, :] <= pos[:, None]  # (n, ctx)
        for layer, block in enumerate(m.blocks):
            a = block.attn
            q, k, v = (t.view(self.n, m.heads, -1)                            # (n, h, d) each
                       for t in a.qkv(block.ln1(x)).split(m.num_hiddens, dim=1))
            self.k[layer, rows, :, pos] = k
            self.v[layer, rows, :, pos] = v
            scores = torch.einsum("nhd,nhtd->nht", q, self.k[layer]) / math.sqrt(q.shape[-1])
            scores = scores.masked_fill(~seen[:, None, :], float("-inf"))    # (n, h, ctx)
            y = torch.einsum("nht,nhtd->nhd", scores.softmax(-1), self.v[layer])  # (n, h, d)
            x = x + a.proj(y.reshape(self.n, m.num_hiddens))                 # (n, dim)
            x = x + block.mlp(x)
        self.length += 1
        return m.lm_head(m.ln_f(x))                                          # (n, V)

    def reorder(self, rows: torch.Tensor) -> None:
        """Stream i continues from stream rows[i] (beam search)."""
        self.k, self.v = self.k[:, rows], self.v[:, rows]
        self.ids, self.length = self.ids[rows], self.length[rows]

    def reset(self, rows: list[int]) -> None:
        """Streams `rows` start again with nothing read (a new client in the lab)."""
        self.length[rows] = 0

    def save(self, rows: list[int]) -> tuple:
        return (self.k[:, rows].clone(), self.v[:, rows].clone(), self.ids[rows].clone(),
                self.length[rows].clone())

    def restore(self, rows: list[int], saved: tuple) -> None:
        self.k[:, rows], self.v[:, rows], self.ids[rows], self.length[rows] = saved
