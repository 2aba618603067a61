"""Loss → update: perplexity, global-norm clipping, one epoch with the book's state handling,
and evaluation on held-out ids. Everything a function uses is passed in.
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import Batches
from .errors import Diverged


def perplexity(loss_sum: float, num_tokens: int) -> float:
    """exp(mean cross-entropy per token); a uniform model over V tokens scores exactly V."""
    mean = loss_sum / num_tokens
    return math.exp(mean) if mean < 709 else math.inf  # exp overflows float64 beyond ~709


def grad_norm(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """‖g‖ over all gradients together (the global L2 norm)."""
    grads = [p.grad for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def clip_gradients(params: Iterable[torch.Tensor], theta: float) -> float:
    """Scale every gradient by θ/‖g‖ when the global norm ‖g‖ exceeds θ; return ‖g‖."""
    params = [p for p in params if p.grad is not None]
    norm = float(grad_norm(params))
    if norm > theta:
        torch._foreach_mul_([p.grad for p in params], theta / norm)
    return norm


def detach_state(state: tuple) -> tuple:
    """Cut the graph at the window edge: the values carry over, the gradients do not."""
    return tuple(s.detach() for s in state)


def sequence_loss(logits: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits (T, B, V) against targets Y (B, T)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), Y.T.reshape(-1))


class Autocast:
    """Mixed precision for the autograd and torch paths: autocast to bf16 or fp16, with a
    gradient scaler for fp16 (whose small range would flush gradients to zero)."""

    def __init__(self, device_type: str = "cpu", dtype: torch.dtype | None = None):
        self.device_type, self.dtype = device_type, dtype
        self.scaler = torch.amp.GradScaler(device_type) if dtype == torch.float16 else None

    @classmethod
    def for_config(cls, config, device: torch.device) -> "Autocast":
        if config.impl in ("bptt", "compiled") or config.precision == "fp32":
            return cls(device.type)          # bptt and compiled cast their own products
        return cls(device.type, torch.bfloat16 if config.precision == "bf16" else torch.float16)

    def context(self):
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None)


def train_step(model: nn.Module, X: torch.Tensor, Y: torch.Tensor, state: tuple | None,
               optimizer: torch.optim.Optimizer, *, clip: float, carry_state: bool,
               device: torch.device | str = "cpu", amp: Autocast | None = None,
               max_loss: float = math.inf) -> tuple[float, tuple]:
    """One optimizer step on the minibatch X, Y (B, T): forward, loss, backward, clip, update.
    Returns (the batch's mean loss, the state after it).

    With sequential batches (`carry_state`) the state of the previous batch goes on, detached;
    otherwise (or with no state yet) it starts from zero. A loss that is not finite or exceeds
    `max_loss` raises `Diverged` before the update, so the weights stay good."""
    X, Y = X.to(device), Y.to(device)
    if state is None or not carry_state:
        state = getattr(model, "module", model).begin_state(X.shape[0], device)  # DDP too
    else:
        state = detach_state(state)
    with amp.context() if amp else contextlib.nullcontext():
        logits, state = model(X, state)                                 # (T, B, V)
        loss = sequence_loss(logits.float(), Y)
    value = float(loss.detach())
    if not math.isfinite(value) or value > max_loss:
        raise Diverged(f"the loss became {value:.4g}")
    optimizer.zero_grad(set_to_none=True)
    scaler = amp.scaler if amp else None
    if scaler is None:
        loss.backward()
        if clip > 0:
            clip_gradients(model.parameters(), clip)
        optimizer.step()
    else:  # fp16: scale the loss up, unscale before clipping, skip steps that overflowed
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        if clip > 0:
            clip_gradients(model.parameters(), clip)
        scaler.step(optimizer)
        scaler.update()
    return value, state


def train_epoch(model: nn.Module, batches: Iterable, optimizer: torch.optim.Optimizer, *,
                clip: float, carry_state: bool, device: torch.device | str = "cpu",
                amp: Autocast | None = None) -> tuple[float, int, float]:
    """One pass over `batches` (`train_step` each); returns (summed loss, tokens, seconds).
    With sequential batches the state is initialised once per epoch and detached between
    batches; with random batches it is initialised for every batch (the book's handling)."""
    loss_sum, tokens, start, state = 0.0, 0, time.perf_counter(), None
    model.train()
    for i, (X, Y) in enumerate(batches):
        try:
            loss, state = train_step(model, X, Y, state, optimizer, clip=clip,
                                     carry_state=carry_state, device=device, amp=amp)
        except Diverged as e:
            raise Diverged(f"{e} at batch {i + 1}") from None
        loss_sum += loss * Y.numel()
        tokens += Y.numel()
    return loss_sum, tokens, time.perf_counter() - start


def make_optimizer(params, name: str, lr: float, weight_decay: float = 0.0
                   ) -> torch.optim.Optimizer:
    """sgd (the book's), adam or adamw (decoupled weight decay)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")


def scheduled_lr(lr: float, *, step: int, progress: float, warmup: int = 0,
                 schedule: str = "constant", scale: float = 1.0) -> float:
    """Learning rate at optimizer `step` (0-based) and training `progress` in [0, 1]:
    linear warm-up over `warmup` steps, then constant, cosine (down to lr/10 at the end),
    or plateau (`scale` is halved by the caller whenever validation stops improving)."""
    factor = min(1.0, (step + 1) / warmup) if warmup else 1.0
    if schedule == "cosine":
        factor *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))
    elif schedule == "plateau":
        factor *= scale
    return lr * factor


def eval_rows(num_tokens: int, batch_size: int, num_steps: int) -> int:
    """How many parallel rows an evaluation over `num_tokens` ids can use (0: too short)."""
    return min(batch_size, (num_tokens - 1) // num_steps)


def held_out_batches(ids: np.ndarray, batch_size: int, num_steps: int) -> Batches:
    """Held-out `ids` cut into up to `batch_size` contiguous rows, read window by window, so
    that with the state carried across windows every token but a short tail is scored once."""
    rows = eval_rows(len(ids), batch_size, num_steps)
    if rows < 1:
        raise ValueError(f"{len(ids)} tokens hold no full sequence of {num_steps} steps")
    row_len = (len(ids) - 1) // rows
    starts = np.arange(rows, dtype=np.int64)[None, :] * row_len + \
        np.arange(row_len // num_steps, dtype=np.int64)[:, None] * num_steps
    return Batches(ids, starts, num_steps)


@torch.no_grad()
def held_out_logits(model: nn.Module, ids: np.ndarray, *, batch_size: int, num_steps: int,
                    device: torch.device | str = "cpu", before: np.ndarray | None = None):
    """(X, Y, logits (T, rows, V)) of each window of held-out `ids` (`held_out_batches`), the
    state carried across windows, in eval mode. `before`: the ids that precede `ids` in the
    text, which a model that reads history (an n-gram mixture) sees first. The windows are
    the model's `scoring_steps` long."""
    batches = held_out_batches(ids, batch_size, model.scoring_steps(num_steps))
    was_training = model.training
    model.eval()
    state = model.prime(model.begin_state(batches.starts.shape[1], device), batches.corpus,
                        batches.starts[0], before)
    try:
        for X, Y in batches:
            logits, state = model(X.to(device), state)                  # (T, rows, V)
            yield X, Y, logits
    finally:
        model.train(was_training)


def evaluate(model: nn.Module, ids: np.ndarray, *, batch_size: int, num_steps: int,
             device: torch.device | str = "cpu", before: np.ndarray | None = None
             ) -> tuple[float, int]:
    """Summed cross-entropy (nats) and token count over held-out `ids`, deterministically
    (every window of `held_out_logits`)."""
    loss_sum, tokens = 0.0, 0
    for _, Y, logits in held_out_logits(model, ids, batch_size=batch_size, num_steps=num_steps,
                                        device=device, before=before):
        # summed in float64 so a uniform model scores exactly V
        loss_sum += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(),
                                          Y.to(device).T.reshape(-1), reduction="sum"))
        tokens += Y.numel()
    return loss_sum, tokens
