"""Two CPU processes on loopback (gloo) train like one process with the same global batch."""
import json
import os
import signal
import subprocess
import sys
import time

import torch

from rnnkit import checkpoint as ckpt
from rnnkit.distributed import free_port

ARGS = ["train", "--hidden", "48", "--max-tokens", "4000", "--batch-size", "8",
        "--val-fraction", "0.02", "--sample-every", "0", "--epochs", "4", "--json"]


def _run(extra, out):
    proc = subprocess.run([sys.executable, "-m", "rnnkit", *ARGS, *extra, "--out", str(out)],
                          capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
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


# Two torchrun agents on loopback, one process each: the README's two multi-node commands,
# with HOST0 = 127.0.0.1 and each "machine" in its own directory (its own disk).
def _node(home, port, args):
    home.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "tm1",
           "-m", "rnnkit", *args, "--out", "runs/tm"]
    return subprocess.Popen(cmd, cwd=home, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _two_nodes(tmp_path, args):
    """Start node 0 (it hosts the rendezvous, and its agent's lower pid makes it rank 0), then 1."""
    port = free_port()
    return _node(tmp_path / "node0", port, args), _node(tmp_path / "node1", port, args)


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _close(a, b, rel):
    return abs(a - b) <= rel * abs(a)


def test_two_nodes_train_like_one_process_and_only_node_0_writes(tmp_path):
    one = _run([], tmp_path / "one")
    node0, node1 = _two_nodes(tmp_path, ARGS)
    for p in (node0, node1):
        assert p.wait(timeout=240) == 0, p.communicate()[1][-2000:]
    two = [json.loads(line) for line in node0.stdout.read().splitlines()]
    assert node1.stdout.read() == ""                     # rank 1 prints nothing
    assert len(two) == len(one) == 5
    for a, b in zip(one[:-1], two[:-1]):
        assert _close(a["train_ppl"], b["train_ppl"], 1e-4)
        assert _close(a["val_ppl"], b["val_ppl"], 1e-4)
    wa = ckpt.read_checkpoint(tmp_path / "one" / "model.safetensors")[0]
    wb = ckpt.read_checkpoint(tmp_path / "node0" / "runs" / "tm" / "model.safetensors")[0]
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5, rtol=1e-4), k
    assert list((tmp_path / "node1").iterdir()) == []    # node 1 wrote nothing on its disk


def test_sigterm_to_one_node_stops_both_with_a_checkpoint_that_resumes_on_one(tmp_path):
    long = [*ARGS[:-3], "--epochs", "24", "--json"]
    assert ARGS[-3:-1] == ["--epochs", "4"]
    node0, node1 = _two_nodes(tmp_path, long)
    run = tmp_path / "node0" / "runs" / "tm"
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").exists() or len(_metrics(run)) < 3:
        assert node0.poll() is None and time.monotonic() < deadline, node0.communicate()[1]
        time.sleep(0.05)
    node1.send_signal(signal.SIGTERM)                    # e.g. the scheduler ends one machine
    err0 = node0.communicate(timeout=120)[1]
    node1.communicate(timeout=120)
    assert node0.returncode != 0 and node1.returncode != 0
    # rank 0 (on node 0) saved the checkpoint and said how to go on, before torchrun's report
    assert err0.startswith("rnnkit: error: training stopped at epoch"), err0[:500]
    assert "--resume --out" in err0.splitlines()[0]
    _, info, _ = ckpt.read_checkpoint(run / "model.safetensors")
    stopped_at = info["epoch"]
    assert 3 <= stopped_at < 24
    assert list((tmp_path / "node1").iterdir()) == []
    # resume on one node, one process: the same global batch, so the same run
    resumed = _run(["--resume", "--epochs", "24"], run)
    ref = _run(["--epochs", "24"], tmp_path / "one")
    assert [m["epoch"] for m in resumed[:-1]] == list(range(stopped_at + 1, 25))
    for a, b in zip(ref[:-1], _metrics(run)):
        assert a["epoch"] == b["epoch"]
        assert _close(a["train_ppl"], b["train_ppl"], 1e-3)
        assert _close(a["val_ppl"], b["val_ppl"], 1e-3)
