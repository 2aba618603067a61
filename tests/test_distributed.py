"""Two CPU processes on loopback (gloo) train like one process with the same global batch."""
import json
import subprocess
import sys

import torch

from rnnkit import checkpoint as ckpt

ARGS = ["train", "--hidden", "48", "--max-tokens", "4000", "--batch-size", "8",
        "--val-fraction", "0.02", "--sample-every", "0", "--epochs", "4", "--json"]


def _run(extra, out):
    proc = subprocess.run([sys.executable, "-m", "rnnkit", *ARGS, *extra, "--out", str(out)],
                          capture_output=True, text=True, timeout=240,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_two_processes_equal_one_with_the_same_global_batch(tmp_path):
    one = _run([], tmp_path / "one")
    two = _run(["--nproc", "2"], tmp_path / "two")
    assert len(one) == len(two) == 5                     # 4 epochs + summary, from rank 0 only
    for a, b in zip(one[:-1], two[:-1]):
        assert abs(a["train_ppl"] - b["train_ppl"]) < 1e-4 * a["train_ppl"]
        assert abs(a["val_ppl"] - b["val_ppl"]) < 1e-4 * a["val_ppl"]
    wa = ckpt.read_checkpoint(tmp_path / "one" / "model.safetensors")[0]
    wb = ckpt.read_checkpoint(tmp_path / "two" / "model.safetensors")[0]
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5, rtol=1e-4), k
    assert (tmp_path / "two" / "perplexity.png").exists()
    # resume the 2-process run for two more epochs, then compare with a 6-epoch single run
    more = _run(["--nproc", "2", "--resume", "--epochs", "6"], tmp_path / "two")
    assert [m["epoch"] for m in more[:-1]] == [5, 6]
