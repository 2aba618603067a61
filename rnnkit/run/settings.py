"""The settings of a new run, decided in one place: the defaults (`TrainConfig`), under a preset
(`--preset`; `quality` sized to the corpus and this machine's speed), under the flags given.

Pure functions: what they need to know of the corpus and the machine is passed in, read at named
steps of `rnnkit train` (see cli/train.py), so nothing here reads a file, a stream or a clock.
"""
from __future__ import annotations

from ..config import MODERN_CELLS, PRESETS, TrainConfig
from ..errors import UsageError

# Flags that only torch's layers run; without an --impl, a run that asks for them gets torch's.
TORCH_ONLY = {
    "layers": lambda s: s.get("layers", 1) > 1,
    "dropout": lambda s: s.get("dropout", 0) > 0,
    "embed": lambda s: s.get("embed", 0) > 0,
    "tie": lambda s: s.get("tie", False),
    "precision fp16": lambda s: s.get("precision") == "fp16",
    "precision bf16 with --cell": lambda s: s.get("precision") == "bf16"
    and s.get("cell", "rnn") != "rnn",
}


def resolve_settings(given: dict, preset: str = "d2l", *, corpus: tuple[int, int] | None = None,
                     rate: float = 0.0) -> tuple[TrainConfig, str | None]:
    """(the TrainConfig of a new run, a note to show or None). `given`: the flags the user gave;
    `corpus`: (training tokens, vocabulary size) and `rate`: this machine's training FLOP/s,
    which the quality preset sizes its model with (without them it keeps its fixed part)."""
    settings, why = dict(PRESETS[preset]), None
    if preset == "quality" and corpus is not None:
        from ..recipe import quality_settings
        sized = quality_settings(*corpus, given.get("time_budget") or 0.0, rate,
                                 kind=given.get("cell"))
        why = sized.pop("why")
        settings.update(sized)
    settings.update(given)
    settings, note = choose_impl(settings, given)
    if why:
        why = f"--preset quality chose {why}; --cell picks another kind"
        note = f"{note}; {why}" if note else why
    return TrainConfig(**settings).validate(), note


def needs_corpus(preset: str) -> bool:
    """Whether a preset sizes the run to its corpus (and, with a time budget, to the machine)."""
    return preset == "quality"


def choose_impl(settings: dict, given: dict) -> tuple[dict, str | None]:
    """With no --impl given, the implementation that can run the flags asked for, and the
    line that says so when it is not the preset's."""
    if settings.get("cell") in MODERN_CELLS and "impl" not in given:
        return {**settings, "impl": "torch"}, None       # the one implementation they have
    needs = [_flag(name, settings) for name, asks in TORCH_ONLY.items() if asks(settings)]
    if needs and "impl" not in given and settings.get("impl", "bptt") != "torch":
        return {**settings, "impl": "torch"}, (
            f"{', '.join(needs)} runs on torch's layers: using --impl torch (the from-scratch "
            "cells are one layer on one-hot inputs)")
    return settings, None


def _flag(name: str, settings: dict) -> str:
    if name == "tie":
        return "--tie"
    if name.startswith("precision"):
        return f"--{name} {settings.get('cell')}" if name.endswith("cell") else f"--{name}"
    return f"--{name} {settings.get(name)}"


def check_processes(batch_size: int, world: int) -> None:
    """A global batch must split evenly over the processes that train it."""
    if batch_size % world:
        raise UsageError(f"--batch-size {batch_size} does not split evenly over {world} "
                         f"processes; pick a multiple of {world}")
