"""Where a training run stands: one dataclass, exactly what a checkpoint saves and `--resume`
restores, written and read by one pair of functions (`save_state` / `load_state`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import checkpoint as ckpt
from ..errors import RnnkitError


@dataclass
class RunState:
    epoch: int = 0                     # epochs finished
    batch: int = 0                     # batches finished of the epoch in progress
    epoch_loss: float = 0.0            # their summed cross-entropy (nats), over all ranks
    epoch_tokens: int = 0              # their target tokens, over all ranks
    epoch_seconds: float = 0.0         # their training seconds
    steps: int = 0                     # optimizer steps so far (drives warm-up)
    train_seconds: float = 0.0         # training seconds so far (--time-budget, cosine progress)
    best_val_ppl: float | None = None  # best validation perplexity so far
    epochs_since_best: int = 0         # epochs since it improved (--patience, plateau)
    lr_scale: float = 1.0              # the plateau schedule's factor
    metrics: list[dict] = field(default_factory=list)  # one record per finished epoch
    carried: tuple | None = None       # hidden state after `batch` (sequential sampling)
    rng: torch.Tensor | None = None    # torch's global generator (dropout draws from it)

    def start_epoch(self) -> None:
        """The epoch in progress is finished: the next one starts from its first batch."""
        self.epoch, self.batch, self.carried = self.epoch + 1, 0, None
        self.epoch_loss, self.epoch_tokens, self.epoch_seconds = 0.0, 0, 0.0


_TENSOR_FIELDS = ("carried", "rng")
_SCALARS = {f.name: f for f in dataclasses.fields(RunState) if f.name not in _TENSOR_FIELDS}


def save_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               state: RunState, *, keep_carried: bool = True) -> None:
    """Weights, optimizer buffers and `state` in one atomic safetensors file."""
    info = {name: getattr(state, name) for name in _SCALARS}
    tensors = {f"opt.{i}.{k}": v for i, s in optimizer.state_dict()["state"].items()
               for k, v in s.items() if isinstance(v, torch.Tensor)}
    if state.rng is not None:
        tensors["rng"] = state.rng
    if keep_carried and state.carried is not None and state.batch > 0:
        tensors.update({f"state.{i}": s for i, s in enumerate(state.carried)})
    ckpt.save_checkpoint(path, model, info, tensors)


def load_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               carried_shapes: list[tuple]) -> RunState:
    """Restore weights and optimizer from a checkpoint written by `save_state`; its state.
    Every field and tensor is checked first: a tampered checkpoint is refused, not trained on.
    `carried_shapes`: the shapes of a full batch's hidden state."""
    weights, info, tensors = ckpt.read_checkpoint(path, ckpt.expected_shapes(model))
    ckpt.load_weights_into(model, weights, path)
    if not isinstance(info, dict):
        raise RnnkitError(f"{path} holds no training state to resume from")
    values = {}
    for name, f in _SCALARS.items():
        if name not in info:
            raise RnnkitError(f"{path}: training state field '{name}' is missing")
        values[name] = _checked(name, info[name], f.default, path)
    _restore_optimizer(optimizer, tensors, path)
    carried = tuple(tensors.get(f"state.{i}") for i in range(len(carried_shapes)))
    if values["batch"] > 0 and "state.0" in tensors:
        if [tuple(t.shape) if t is not None else None for t in carried] != carried_shapes:
            raise RnnkitError(f"{path}: the saved hidden state does not fit the run")
    elif values["batch"] > 0 and values["epoch_tokens"] == 0:
        raise RnnkitError(f"{path}: training state is inconsistent (a batch but no tokens)")
    rng = tensors.get("rng")
    if rng is not None and (rng.dtype != torch.uint8 or rng.shape != torch.get_rng_state().shape):
        raise RnnkitError(f"{path}: the saved random generator state is invalid")
    return RunState(**values, carried=carried if "state.0" in tensors else None, rng=rng)


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict, path: Path) -> None:
    """Optimizer buffers `opt.<param index>.<name>`, each the shape of its parameter."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    sd = optimizer.state_dict()
    for key, value in tensors.items():
        if not key.startswith("opt."):
            continue
        _, i, name = key.split(".", 2)
        ok = i.isdigit() and int(i) < len(params) and (
            value.numel() == 1 if name == "step" else value.shape == params[int(i)].shape)
        if not ok or not torch.isfinite(value).all():
            raise RnnkitError(f"{path}: optimizer state {key} does not fit the model")
        sd["state"].setdefault(int(i), {})[name] = value
    optimizer.load_state_dict(sd)


def _checked(name: str, value, default, path: Path):
    """`value` if it has the type of the field's default (or None where the default is None)."""
    if name == "best_val_ppl":
        ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
    elif name == "metrics":
        ok = isinstance(value, list) and all(_is_record(m) for m in value)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
    else:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if not ok:
        raise RnnkitError(f"{path}: training state field '{name}' is invalid ({value!r})")
    return value


def _is_record(m) -> bool:
    """One line of metrics.jsonl: {"epoch": int, "train_ppl": float, "val_ppl": float | None,
    "tokens_per_s": float}."""
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    return (isinstance(m, dict) and isinstance(m.get("epoch"), int) and number(m.get("train_ppl"))
            and (m.get("val_ppl") is None or number(m.get("val_ppl")))
            and number(m.get("tokens_per_s")))
