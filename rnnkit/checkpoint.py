"""The one saver and the one loader of a run directory.

    RUN/config.json        TrainConfig (JSON, validated on load)
    RUN/vocab.json         Vocab (JSON, validated on load)
    RUN/model.safetensors  weights of the last checkpoint, plus (as `trainer.*` tensors and JSON
                           metadata) where training stands: epoch, batch, sums, carried state
                           and optimizer buffers, so weights and resume data never disagree
Every file is written atomically (temporary file, fsync, rename), so a crash leaves the
previous checkpoint whole. Nothing here unpickles anything.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from .config import TrainConfig
from .errors import RnnkitError
from .models import build_model
from .text import Vocab

RUN_FILES = ("config.json", "vocab.json", "model.safetensors")
OUTPUT_FILES = RUN_FILES + ("metrics.jsonl", "perplexity.png", "best.safetensors")


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a reader sees the old file or the new, never a mix."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def save_run_metadata(run_dir: Path, config: TrainConfig, vocab: Vocab) -> None:
    atomic_write(run_dir / "config.json", _json_bytes(
        {"format": "rnnkit-config", "version": 1, "config": config.to_dict()}))
    atomic_write(run_dir / "vocab.json", _json_bytes(vocab.to_dict()))


def save_checkpoint(path: Path, model: nn.Module, trainer: dict | None = None,
                    trainer_tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Weights (and optionally resume data) in one safetensors file, written atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"trainer.{k}": v.detach().cpu().contiguous()
                    for k, v in (trainer_tensors or {}).items()})
    metadata = {"format": "rnnkit-weights"}
    if trainer is not None:
        metadata["trainer"] = json.dumps(trainer)
    atomic_write(path, st_save(tensors, metadata=metadata))


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RnnkitError(f"{path} is unreadable or corrupted ({e}); the {what} cannot be "
                          "loaded") from None


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict | None,
                                         dict[str, torch.Tensor]]:
    """(weights, trainer info or None, trainer tensors) of a checkpoint, with a clear error for
    a missing, truncated or foreign file."""
    try:
        data = path.read_bytes()
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8:8 + header_len]).get("__metadata__") or {}
    except FileNotFoundError:
        raise RnnkitError(f"{path} is missing") from None
    except (OSError, SafetensorError, ValueError, RuntimeError) as e:
        raise RnnkitError(f"{path} is not a valid safetensors file ({str(e)[:100]}); "
                          "it may be truncated or corrupted") from None
    trainer = None
    if "trainer" in metadata:
        try:
            trainer = json.loads(metadata["trainer"])
        except json.JSONDecodeError:
            raise RnnkitError(f"{path}: its training state is corrupted") from None
    weights = {k: v for k, v in tensors.items() if not k.startswith("trainer.")}
    extra = {k[len("trainer."):]: v for k, v in tensors.items() if k.startswith("trainer.")}
    return weights, trainer, extra


def load_config_and_vocab(run_dir: str | os.PathLike) -> tuple[TrainConfig, Vocab]:
    run = Path(run_dir)
    if not run.is_dir():
        raise RnnkitError(f"run directory not found: {run}; pass a directory made by "
                          "'rnnkit train --out'")
    missing = [f for f in RUN_FILES if not (run / f).is_file()]
    if missing:
        raise RnnkitError(f"{run} is not a complete rnnkit run (missing {', '.join(missing)})")
    meta = _read_json(run / "config.json", "config")
    if not isinstance(meta, dict) or meta.get("format") != "rnnkit-config":
        raise RnnkitError(f"{run / 'config.json'} is not an rnnkit config")
    try:
        config = TrainConfig.from_dict(meta.get("config"))
    except RnnkitError as e:  # a bad file, not a bad command line: a runtime failure
        raise RnnkitError(f"{run / 'config.json'}: {e}") from None
    try:
        vocab = Vocab.from_dict(_read_json(run / "vocab.json", "vocabulary"))
    except ValueError as e:
        raise RnnkitError(f"{run / 'vocab.json'}: {e}") from None
    return config, vocab


def load_weights_into(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Copy `tensors` into `model`, refusing missing, extra, misshapen or non-finite tensors."""
    expected = model.state_dict()
    if set(tensors) != set(expected):
        raise RnnkitError(f"{path} does not fit the config: it holds "
                          f"{sorted(tensors)}, the model needs {sorted(expected)}")
    for name, t in tensors.items():
        if t.shape != expected[name].shape or t.dtype != expected[name].dtype:
            raise RnnkitError(f"{path} does not fit the config and vocabulary: {name} is "
                              f"{tuple(t.shape)} {t.dtype}, expected "
                              f"{tuple(expected[name].shape)} {expected[name].dtype}")
        if not torch.isfinite(t).all():
            raise RnnkitError(f"{path}: {name} holds NaN or infinite values")
    model.load_state_dict(tensors)


def load_run(run_dir: str | os.PathLike, *, weights: str = "model.safetensors",
             device: str = "cpu") -> tuple[nn.Module, Vocab, TrainConfig]:
    """Rebuild a trained model from a run directory: (model in eval mode, vocab, config)."""
    config, vocab = load_config_and_vocab(run_dir)
    model = build_model(len(vocab), config)
    path = Path(run_dir) / weights
    load_weights_into(model, read_checkpoint(path)[0], path)
    return model.to(device).eval(), vocab, config


def check_trainer(info: dict | None, path: Path) -> dict:
    """The resume data of a checkpoint, refusing missing or mistyped fields."""
    if not isinstance(info, dict):
        raise RnnkitError(f"{path} holds no training state to resume from")
    for key, kind in (("epoch", int), ("batch", int), ("tokens", int), ("loss_sum", float),
                      ("seconds", float), ("metrics", list)):
        value = info.get(key)
        ok = isinstance(value, kind) or (kind is float and isinstance(value, int))
        if not ok or isinstance(value, bool) or (kind is not list and value < 0):
            raise RnnkitError(f"{path}: training state field '{key}' is missing or invalid")
    return info
