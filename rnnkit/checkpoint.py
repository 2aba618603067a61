"""The one saver and the one loader of a run directory.

    RUN/config.json        TrainConfig (JSON, validated on load)
    RUN/vocab.json         Vocab (JSON, validated on load)
    RUN/model.safetensors  weights of the last checkpoint, plus (as `trainer.*` tensors and JSON
                           metadata) where training stands: see `run/state.py`
    RUN/best.safetensors   weights of the epoch with the best validation perplexity
    RUN/ngram.safetensors  the Kneser–Ney counts mixed into the network (`--ngram`, ngram.py):
                           sorted n-gram keys and counts per context length, and in the
                           metadata the discounts, the mixing weights and their figures
Every file is written atomically (temporary file, fsync, rename), so a crash leaves the
previous checkpoint whole. Every file is checked to be a regular file of a bounded size, and a
checkpoint's tensor shapes are checked against the config before anything is allocated.
Nothing here unpickles anything.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from .config import TrainConfig
from .errors import RnnkitError
from .files import atomic_write, check_regular_file, read_bounded
from .models import LanguageModel, build_model, check_size
from .ngram import KneserNey, NgramMixture
from .text import Vocab

RUN_FILES = ("config.json", "vocab.json", "model.safetensors")
OUTPUT_FILES = RUN_FILES + ("metrics.jsonl", "perplexity.png", "best.safetensors",
                            "ngram.safetensors", "copies.safetensors")
WEIGHTS = {"best": "best.safetensors", "last": "model.safetensors"}
MAX_JSON_BYTES = 64 << 20        # config.json, vocab.json (a vocabulary of a million words fits)
MAX_HEADER_BYTES = 100 << 20     # a safetensors header: names, shapes, offsets and metadata


def _json_bytes(obj) -> bytes:
    try:
        return (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:  # e.g. a corpus path that is not UTF-8: escape, still round-trips
        return (json.dumps(obj, indent=1) + "\n").encode("ascii")


def save_run_metadata(run_dir: Path, config: TrainConfig, vocab: Vocab) -> None:
    atomic_write(run_dir / "config.json", _json_bytes(
        {"format": "rnnkit-config", "version": 1, "config": config.to_dict()}))
    atomic_write(run_dir / "vocab.json", _json_bytes(vocab.to_dict()))


def save_checkpoint(path: Path, model: nn.Module, trainer: dict | None = None,
                    trainer_tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Weights (and optionally resume data) in one safetensors file, written atomically.

    A tensor the model uses under two names (tied embedding and output weights) is stored once;
    the metadata names its aliases, and loading into a model built tied re-ties it."""
    tensors, aliases, seen = {}, {}, {}
    for name, value in model.state_dict().items():
        key = (value.data_ptr(), tuple(value.shape), value.dtype)
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = value.detach().cpu().contiguous()
    tensors.update({f"trainer.{k}": v.detach().cpu().contiguous()
                    for k, v in (trainer_tensors or {}).items()})
    metadata = {"format": "rnnkit-weights"}
    if aliases:
        metadata["aliases"] = json.dumps(aliases)
    if trainer is not None:
        metadata["trainer"] = json.dumps(trainer)
    atomic_write(path, st_save(tensors, metadata=metadata))


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(read_bounded(path, MAX_JSON_BYTES, what).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RnnkitError(f"{path} is unreadable or corrupted ({e}); the {what} cannot be "
                          "loaded") from None


def read_header(path: Path) -> tuple[dict, dict]:
    """({tensor name: (shape, dtype string)}, metadata) from a safetensors file's header,
    reading only the header, and refusing a file whose size does not match it."""
    size = check_regular_file(path, "checkpoint").st_size
    bad = f"{path} is not a valid safetensors file"
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if size < 8 or not 2 <= n <= min(MAX_HEADER_BYTES, size - 8):
            raise RnnkitError(f"{bad} (its header does not fit the file); it may be truncated "
                              "or corrupted")
        try:
            header = json.loads(f.read(n))
            metadata = header.pop("__metadata__", None) or {}
            shapes = {k: (tuple(v["shape"]), v["dtype"]) for k, v in header.items()}
            end = max([v["data_offsets"][1] for v in header.values()], default=0)
        except (ValueError, TypeError, KeyError, AttributeError):
            raise RnnkitError(f"{bad} (unreadable header); it may be corrupted") from None
    if 8 + n + end != size:
        raise RnnkitError(f"{bad} ({size:,} bytes where its header describes {8 + n + end:,}); "
                          "it may be truncated or corrupted")
    return shapes, metadata


def read_checkpoint(path: Path, expected: dict | None = None
                    ) -> tuple[dict[str, torch.Tensor], dict | None, dict[str, torch.Tensor]]:
    """(weights, trainer info or None, trainer tensors) of a checkpoint, with a clear error for
    a missing, truncated or foreign file. With `expected` ({name: shape}), the weights' shapes
    are checked from the header before the file's data is read."""
    shapes, metadata = read_header(path)
    try:
        aliases = json.loads(metadata.get("aliases", "{}"))
        trainer = json.loads(metadata["trainer"]) if "trainer" in metadata else None
    except json.JSONDecodeError:
        raise RnnkitError(f"{path}: its metadata is corrupted") from None
    if expected is not None:
        stored = {k: s for k, (s, _) in shapes.items() if not k.startswith("trainer.")}
        stored.update({a: stored.get(b) for a, b in aliases.items()})
        if stored != expected:
            wrong = sorted(k for k in set(stored) | set(expected)
                           if stored.get(k) != expected.get(k))[:4]
            raise RnnkitError(f"{path} does not fit the config and vocabulary ("
                              + ", ".join(f"{k}: {stored.get(k)} stored, {expected.get(k)} "
                                          "expected" for k in wrong) + ")")
    try:
        tensors = st_load(path.read_bytes())
    except (OSError, SafetensorError, ValueError, RuntimeError) as e:
        raise RnnkitError(f"{path} is not a valid safetensors file ({str(e)[:100]}); "
                          "it may be truncated or corrupted") from None
    weights = {k: v for k, v in tensors.items() if not k.startswith("trainer.")}
    for alias, name in aliases.items():
        if name in weights:
            weights[alias] = weights[name]
    extra = {k[len("trainer."):]: v for k, v in tensors.items() if k.startswith("trainer.")}
    return weights, trainer, extra


def load_config_and_vocab(run_dir: str | os.PathLike) -> tuple[TrainConfig, Vocab]:
    run = Path(run_dir)
    if run.is_file():
        raise RnnkitError(f"{run} is a file, not a run directory; pass a directory made by "
                          "'rnnkit train --out'")
    if not run.is_dir():
        raise RnnkitError(f"run directory not found: {run}; pass a directory made by "
                          "'rnnkit train --out'")
    missing = [f for f in RUN_FILES if not (run / f).exists()]
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
    try:
        check_size(len(vocab), config)
    except RnnkitError as e:
        raise RnnkitError(f"{run / 'config.json'}: {e}") from None
    return config, vocab


def expected_shapes(model: nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def load_weights_into(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Copy `tensors` into `model`, refusing missing, extra, misshapen or non-finite tensors."""
    expected = model.state_dict()
    if set(tensors) != set(expected):
        raise RnnkitError(f"{path} does not fit the config: it holds "
                          f"{sorted(tensors)}, the model needs {sorted(expected)}")
    for name, t in tensors.items():
        if t.shape != expected[name].shape or not t.dtype.is_floating_point:
            raise RnnkitError(f"{path} does not fit the config and vocabulary: {name} is "
                              f"{tuple(t.shape)} {t.dtype}, expected "
                              f"{tuple(expected[name].shape)} {expected[name].dtype}")
        if not torch.isfinite(t).all():
            raise RnnkitError(f"{path}: {name} holds NaN or infinite values")
    # any floating dtype loads: load_state_dict copies into the model's own (fp32) tensors
    model.load_state_dict(tensors)


def weights_path(run_dir: str | os.PathLike, weights: str = "best") -> Path:
    """The weights file a run is used with: `best` (the best validation epoch's, where the run
    has one, else the last), `last`, or a file name inside the run directory."""
    run = Path(run_dir)
    if weights == "best":
        best = run / WEIGHTS["best"]
        return best if best.exists() else run / WEIGHTS["last"]
    name = WEIGHTS.get(weights, weights)
    if Path(name).name != name:
        raise RnnkitError(f"--weights {weights!r}: name a file inside the run directory "
                          "(best, last, or e.g. best.safetensors)")
    return run / name


def save_ngram(path: Path, mixture: NgramMixture) -> None:
    """The n-gram part of a mixture (counts, discounts, weights, figures), written atomically."""
    ngram = mixture.ngram
    tensors = {}
    for k, table in enumerate(ngram.tables):
        tensors[f"keys.{k}"] = torch.from_numpy(table.keys)
        tensors[f"counts.{k}"] = torch.from_numpy(table.counts)
    metadata = {"format": "rnnkit-ngram", "order": str(ngram.order),
                "discounts": json.dumps([t.discount for t in ngram.tables]),
                "weights": json.dumps(mixture.weights.tolist()),
                "report": json.dumps(mixture.report)}
    atomic_write(path, st_save(tensors, metadata=metadata))


def load_ngram(path: Path, network: nn.Module, vocab_size: int) -> NgramMixture:
    """`network` mixed with the n-gram model saved at `path`, every array checked first."""
    shapes, metadata = read_header(path)
    bad = f"{path} is not a valid rnnkit n-gram file"
    try:
        order = int(metadata.get("order", ""))
        discounts = json.loads(metadata["discounts"])
        weights = json.loads(metadata["weights"])
        report = json.loads(metadata.get("report", "{}"))
    except (KeyError, ValueError):
        raise RnnkitError(f"{bad} (its metadata is corrupted)") from None
    names = {f"{kind}.{k}" for kind in ("keys", "counts") for k in range(max(order + 1, 0))}
    if metadata.get("format") != "rnnkit-ngram" or set(shapes) != names:
        raise RnnkitError(f"{bad} (it holds {sorted(shapes)[:4]}…)")
    tensors = read_checkpoint(path)[0]
    try:
        mixture = NgramMixture(network, KneserNey.from_arrays(
            [(tensors[f"keys.{k}"].numpy(), tensors[f"counts.{k}"].numpy())
             for k in range(order + 1)], discounts, vocab_size), weights,
            report=report if isinstance(report, dict) else {})
    except (ValueError, TypeError) as e:
        raise RnnkitError(f"{bad} ({e})") from None
    return mixture.eval()


def load_run(run_dir: str | os.PathLike, *, weights: str | None = None,
             device: str | torch.device = "cpu", ngram: bool = True
             ) -> tuple[LanguageModel, Vocab, TrainConfig]:
    """Rebuild a trained model from a run directory: (model in eval mode, vocab, config).

    `weights`: best, last, or a file in the run directory; by default, what the run ended on.
    Weights load onto `device` in fp32 whatever device and precision they were trained with.
    A run with an n-gram model (`--ngram`) gives the mixture, unless `ngram` is False."""
    config, vocab = load_config_and_vocab(run_dir)
    return load_model(run_dir, config, vocab, weights=weights, device=device, ngram=ngram), \
        vocab, config


def load_model(run_dir: str | os.PathLike, config: TrainConfig, vocab: Vocab, *,
               weights: str | None = None, device: str | torch.device = "cpu",
               ngram: bool = True) -> LanguageModel:
    """The model of a run whose config and vocabulary are read (`load_run`)."""
    path = weights_path(run_dir, weights or config.end_on or "last")
    model = build_model(len(vocab), config)    # its size was checked with the config
    tensors = read_checkpoint(path, expected_shapes(model))[0]
    load_weights_into(model, tensors, path)
    model = model.to(device).eval()
    if ngram and config.ngram and (Path(run_dir) / "ngram.safetensors").exists():
        model = load_ngram(Path(run_dir) / "ngram.safetensors", model, len(vocab))
    return model
