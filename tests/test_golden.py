"""Regression guard: two short runs recorded on the code before the training loop was reshaped
(issue #10); their per-epoch perplexities and final weights must stay bitwise the same.

The figures were recorded with torch 2.13.0 on the project's 2-core AMD EPYC (one thread, as
conftest sets). Another CPU may round a GEMM differently, so there the weights are compared by
their sums to 1e-6 instead of by hash; on the recording machine the hash must match exactly.
"""
import hashlib
import json
from pathlib import Path

import pytest
import torch

from rnnkit import checkpoint as ckpt
from rnnkit.cli import main

RUNS = {
    "chapter": ["--hidden", "32", "--epochs", "3", "--max-tokens", "3000", "--batch-size", "8",
                "--val-fraction", "0.05", "--sample-every", "0"],
    "gru_adam_dropout_cosine_patience": [
        "--hidden", "32", "--epochs", "12", "--max-tokens", "3000", "--batch-size", "8",
        "--val-fraction", "0.05", "--sample-every", "0", "--cell", "gru", "--impl", "torch",
        "--embed", "16", "--dropout", "0.2", "--optimizer", "adam", "--lr", "0.03",
        "--schedule", "cosine", "--warmup", "3", "--patience", "2"],
}
RECORDED_ON = {"torch": "2.13.0+cpu", "cpu": "AMD EPYC"}


def _sha256(tensors: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].numpy().tobytes())
    return h.hexdigest()


def fingerprint(run: Path) -> dict:
    """(epoch, train_ppl, val_ppl) per epoch, the last and best weights' sha256, and per-tensor sums."""
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    weights = ckpt.read_checkpoint(run / "model.safetensors")[0]
    best = ckpt.read_checkpoint(run / "best.safetensors")[0]
    return {"metrics": [[m["epoch"], m["train_ppl"], m["val_ppl"]] for m in metrics],
            "weights_sha256": _sha256(weights), "best_sha256": _sha256(best),
            "sums": {k: [float(v.double().sum()), float(v.double().abs().sum())]
                     for k, v in sorted(weights.items())}}


def _recording_machine() -> bool:
    cpu = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return torch.__version__ == RECORDED_ON["torch"] and RECORDED_ON["cpu"] in cpu


GOLDEN = json.loads((Path(__file__).parent / "golden_runs.json").read_text())


@pytest.mark.parametrize("name", sorted(RUNS))
def test_runs_are_bitwise_what_they_were_before_the_loop_was_reshaped(name, tmp_path, capsys):
    assert main(["train", *RUNS[name], "--out", str(tmp_path / name)]) == 0
    got, want = fingerprint(tmp_path / name), GOLDEN[name]
    if _recording_machine():
        assert got["metrics"] == want["metrics"]
        assert got["weights_sha256"] == want["weights_sha256"]
        assert got["best_sha256"] == want["best_sha256"]
    else:
        assert got["metrics"] == pytest.approx(want["metrics"], rel=1e-6)
        assert got["sums"] == pytest.approx(want["sums"], rel=1e-6, abs=1e-9)
