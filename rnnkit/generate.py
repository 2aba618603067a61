"""Samples: warm up on a prefix, then greedy argmax (the book's `predict_ch8`) or temperature /
top-k / top-p sampling, for one stream or many at once, and beam search. Inference only: no
autograd; greedy and sampled steps build no new tensors (beam search's do, to rank its beams).
"""
from __future__ import annotations

import numpy as np
import torch

from . import fastloop
from .models import LanguageModel
from .text import Vocab, detokenize, tokens_of


def rnn_step_numpy(h: np.ndarray, W_hh: np.ndarray, row: np.ndarray, z: np.ndarray, *,
                   out: np.ndarray) -> np.ndarray:
    """H_t = tanh(X_t W_xh + b_h + H_{t-1} W_hh) for one stream, in numpy, allocating nothing:
    `row` is X_t W_xh + b_h (H,), `z` a scratch buffer (H,); H_t is written to `out` (H,).
    The single-stream fast path of greedy decoding and of the lab's trace."""
    np.dot(h, W_hh, out=z)                                         # (H,) H_{t-1} W_hh
    z += row                                                       # (H,) + X_t W_xh + b_h
    return np.tanh(z, out=out)                                     # (H,) H_t


class ScratchStepper:
    """One step of H_t = tanh(X_t W_xh + H_{t-1} W_hh + b_h), O_t = H_t W_hq + b_q for N streams
    with preallocated buffers: ids (N,) → logits (N, V). Built from the five parameters."""

    def __init__(self, W_xh, W_hh, b_h, W_hq, b_q, h: torch.Tensor):
        # X_t W_xh + b_h with one-hot X_t is row X_t of (W_xh + b_h): precompute every row.
        self.rows = (W_xh + b_h).detach().float()                        # (V, H)
        self.W_hh_given = W_hh.detach().float()                         # (H, H) as given
        self._W_hh = None                                                # (H, H) fast layout
        self.W_hq, self.b_q = W_hq.detach().float(), b_q.detach().float()  # (H, V), (V,)
        self.h = h.detach().float().clone()                              # (N, H)
        self.z = torch.empty_like(self.h)                                # (N, H)
        self.logits = torch.empty(h.shape[0], self.b_q.shape[0], dtype=h.dtype)  # (N, V)
        self.packed = None                                 # W_hh, W_hq in fastloop's layout

    @property
    def W_hh(self) -> torch.Tensor:
        """W_hh laid out column-major: faster for addmm (MKL) and numpy's GEMV here."""
        if self._W_hh is None:
            self._W_hh = self.W_hh_given.t().contiguous().t()
        return self._W_hh

    def greedy(self, prefix: list[int], num_preds: int) -> list[int]:
        """Single-stream greedy decoding: the whole loop in one compiled call (`fastloop`),
        else `greedy_numpy`. Same steps, same ids (tested)."""
        if fastloop.library() is None:
            return self.greedy_numpy(prefix, num_preds)
        if self.packed is None:                                    # once per stepper
            self.packed = (fastloop.pack_columns(self.W_hh_given.numpy()),
                           fastloop.pack_columns(self.W_hq.numpy()))
        return fastloop.rnn_greedy(prefix, num_preds, self.rows.numpy(), *self.packed,
                                   self.b_q.numpy(), self.h[0].numpy())

    def greedy_numpy(self, prefix: list[int], num_preds: int) -> list[int]:
        """Single-stream greedy decoding in numpy: one GEMV per step with no torch dispatch
        (OpenBLAS's 512×512 GEMV plus numpy's per-call cost is ~2.5× cheaper than torch's here).
        """
        rows, W_hh = self.rows.numpy(), self.W_hh.numpy()          # (V, H), (H, H)
        W_hq, b_q = self.W_hq.numpy(), self.b_q.numpy()            # (H, V), (V,)
        h = self.h[0].numpy().copy()                               # (H,)
        z = np.empty_like(h)                                       # (H,)
        out, idx = [], prefix[0]
        for i in range(len(prefix) - 1 + num_preds):
            h = rnn_step_numpy(h, W_hh, rows[idx], z, out=h)       # (H,) H_t
            if i + 1 < len(prefix):
                idx = prefix[i + 1]                                # warm-up: feed the prefix
            else:
                idx = int(np.argmax(h @ W_hq + b_q))               # O_t, greedy
                out.append(idx)
        return out

    def reorder(self, rows: torch.Tensor) -> None:
        """Stream i continues from stream rows[i] (beam search)."""
        self.h = self.h[rows]                                            # (N, H)

    def reset(self, rows: list[int]) -> None:
        """Streams `rows` start again from the zero state (a new client in the lab)."""
        self.h[rows] = 0.0

    def save(self, rows: list[int]) -> torch.Tensor:
        """The state of streams `rows`, to `restore` after a step they sit out (the lab)."""
        return self.h[rows].clone()

    def restore(self, rows: list[int], saved: torch.Tensor) -> None:
        self.h[rows] = saved

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        torch.index_select(self.rows, 0, ids, out=self.z)                # (N, H)
        self.z.addmm_(self.h, self.W_hh)                                 # (N, H)
        torch.tanh(self.z, out=self.h)                                   # (N, H)
        return torch.addmm(self.b_q, self.h, self.W_hq, out=self.logits)  # (N, V)


class ModelStepper:
    """Any model with `begin_state` and `forward`: one step for N streams."""

    def __init__(self, model: LanguageModel, n: int, device):
        self.model, self.state = model, model.begin_state(n, device)

    def reorder(self, rows: torch.Tensor) -> None:
        """Stream i continues from stream rows[i] (beam search)."""
        self.state = tuple(s.index_select(s.dim() - 2, rows) for s in self.state)

    def reset(self, rows: list[int]) -> None:
        """Streams `rows` start again from the zero state (a new client in the lab)."""
        for s in self.state:
            s[..., rows, :] = 0.0

    def save(self, rows: list[int]) -> list[torch.Tensor]:
        """The state of streams `rows`, to `restore` after a step they sit out (the lab)."""
        return [s[..., rows, :].clone() for s in self.state]

    def restore(self, rows: list[int], saved: list[torch.Tensor]) -> None:
        for s, kept in zip(self.state, saved):
            s[..., rows, :] = kept

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        logits, self.state = self.model(ids[:, None], self.state)       # (1, N, V)
        return logits[0]                                                 # (N, V)


def pick_next(logits: torch.Tensor, *, temperature: float = 0.0, top_k: int | None = None,
              top_p: float | None = None, generator: torch.Generator | None = None
              ) -> torch.Tensor:
    """Next ids (N,) from logits (N, V): greedy when temperature is 0 or top_k is 1.
    Temperatures below 1e-5 are greedy too: dividing by them overflows fp32 logits."""
    if temperature < 1e-5 or top_k == 1:
        return logits.argmax(dim=1)
    logits = logits / temperature                               # sharpen (T<1) or flatten (T>1)
    if top_k is not None and top_k < logits.shape[1]:
        kth = torch.topk(logits, top_k, dim=1).values[:, -1:]   # (N, 1) k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=1)                         # (N, V)
    if top_p is not None and top_p < 1.0:
        sorted_p, order = torch.sort(probs, dim=1, descending=True)
        # drop a token once the mass before it already reaches top_p (the first always stays)
        drop = (sorted_p.cumsum(dim=1) - sorted_p) >= top_p
        drop[:, 0] = False          # even where top_p is below float32's range (1e-50 → 0)
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]  # (N,)


@torch.inference_mode()
def generate_ids(model: LanguageModel, prefix: list[int], num_preds: int, *, num_samples: int = 1,
                 temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """Warm up on `prefix` ids, then produce `num_preds` ids per stream: (num_samples, num_preds)."""
    if not prefix:
        raise ValueError("the prefix must hold at least one token")
    step = model.stepper(num_samples, device)
    return generate_with(step, prefix, num_preds, num_samples=num_samples,
                         temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                         device=device)


@torch.inference_mode()
def generate_with(step, prefix: list[int], num_preds: int, *, num_samples: int = 1,
                  temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                  seed: int | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """`generate_ids` over a step function ids (N,) → logits (N, V) that carries its own state."""
    if num_samples == 1 and (temperature < 1e-5 or top_k == 1) and hasattr(step, "greedy"):
        return torch.tensor([step.greedy(prefix, num_preds)], dtype=torch.long)
    generator = (torch.Generator(device=device).manual_seed(seed) if seed is not None
                 else None)
    ids = torch.full((num_samples,), prefix[0], dtype=torch.long, device=device)
    for tok in prefix[1:]:                                   # warm-up: update the state only
        step(ids)
        ids.fill_(tok)
    out = torch.empty(num_samples, num_preds, dtype=torch.long)
    for i in range(num_preds):
        logits = step(ids)                                   # (N, V) forward one step
        ids = pick_next(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                        generator=generator)                 # (N,)
        out[:, i] = ids
    return out


@torch.inference_mode()
def beam_search(model: LanguageModel, prefix: list[int], num_preds: int, *, beam: int,
                num_results: int = 1, length_penalty: float = 0.0, stop_id: int | None = None,
                device: torch.device | str = "cpu") -> list[tuple[list[int], float]]:
    """The `num_results` best continuations of `prefix` as (ids, log-probability), best first.

    Keeps the `beam` best partial continuations by total log-probability, stepping them as one
    batch. A continuation ends at `stop_id` (included) or after `num_preds` tokens and is ranked
    by log P / L^length_penalty, L its length (the book's beam-search score). Beam search is not
    monotone in its width, so the greedy continuation runs as one more stream and competes too:
    the result is never less probable than greedy decoding's.
    """
    if not prefix:
        raise ValueError("the prefix must hold at least one token")
    if not 1 <= num_results <= beam:
        raise ValueError("num_results must be between 1 and the beam width")
    n = beam + 1                                    # streams 0..beam-1: the beam; beam: greedy
    step = model.stepper(n, device)
    ids = torch.full((n,), prefix[0], dtype=torch.long, device=device)
    for tok in prefix[1:]:                          # warm-up: every stream reads the prefix
        step(ids)
        ids.fill_(tok)
    scores = torch.full((n,), float("-inf"), dtype=torch.float64)
    scores[0] = scores[beam] = 0.0                  # the streams start equal: keep one of them
    seqs = torch.empty(n, 0, dtype=torch.long)
    done: list[tuple[list[int], float]] = [([], 0.0)] if num_preds == 0 else []
    for t in range(num_preds):
        logp = torch.log_softmax(step(ids).double(), dim=1).cpu()   # (n, V) next-token log p
        vocab_size = logp.shape[1]
        total = (scores[:beam, None] + logp[:beam]).flatten()      # (beam * V,) candidates
        best = torch.topk(total, beam)                              # the beam best, ranked
        greedy = int(logp[beam].argmax())
        rows = torch.cat([best.indices // vocab_size, torch.tensor([beam])])   # (n,) parents
        tokens = torch.cat([best.indices % vocab_size, torch.tensor([greedy])])
        scores = torch.cat([best.values, (scores[beam] + logp[beam, greedy]).reshape(1)])
        seqs = torch.cat([seqs[rows], tokens[:, None]], dim=1)     # (n, t + 1)
        step.reorder(rows.to(device))
        ids = tokens.to(device)
        ended = [r for r in range(n) if stop_id is not None and int(tokens[r]) == stop_id]
        for r in ended + ([] if t + 1 < num_preds else [r for r in range(n) if r not in ended]):
            if scores[r] > float("-inf"):
                done.append((seqs[r].tolist(), float(scores[r])))
        for r in ended:
            scores[r] = float("-inf")               # an ended continuation goes no further
        if all(scores[r] == float("-inf") for r in range(n)):
            break

    def ranked(item):
        return item[1] / max(len(item[0]), 1) ** length_penalty
    unique = {tuple(s): (s, lp) for s, lp in done}.values()
    return sorted(unique, key=ranked, reverse=True)[:num_results]


def prefix_ids(vocab: Vocab, prefix: str, token: str = "char") -> tuple[list[int], list[str]]:
    """Prefix text → ids, and the tokens that were not in the vocabulary (mapped to <unk>)."""
    tokens = tokens_of(prefix, token)
    unknown = [t for t in tokens if t not in vocab.token_to_idx]
    return vocab[tokens], unknown


def predict(model: LanguageModel, vocab: Vocab, prefix: str, num_preds: int, *, token: str = "char",
            device: torch.device | str = "cpu", **sampling) -> str:
    """The book's `predict_ch8`: prefix (as the vocabulary spells it) + `num_preds` tokens."""
    ids, _ = prefix_ids(vocab, prefix, token)
    new = generate_ids(model, ids, num_preds, device=device, **sampling)[0].tolist()
    return detokenize(vocab.to_tokens(ids + new), token)
