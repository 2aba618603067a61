"""Runs survive crashes and signals; checkpoints from strangers run no code."""
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rnnkit import checkpoint as ckpt
from rnnkit.cli import main
from rnnkit.errors import RnnkitError

RUN = ["--hidden", "48", "--max-tokens", "3000", "--batch-size", "8", "--val-fraction", "0.02",
       "--sample-every", "0"]


def _weights(run):
    return ckpt.read_checkpoint(Path(run) / "model.safetensors")[0]


def _metrics(run):
    rows = [json.loads(x) for x in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    return [(m["epoch"], m["train_ppl"], m["val_ppl"]) for m in rows]   # not the timings


def _start(args):
    return subprocess.Popen([sys.executable, "-m", "rnnkit", "train", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_epochs(run, n, proc, timeout=60):
    end = time.time() + timeout
    path = Path(run) / "metrics.jsonl"
    while time.time() < end:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    raise AssertionError("training made no progress")


class Planted:
    """A pickle that creates a file when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_malicious_pickle_in_place_of_weights_is_refused_unexecuted(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *RUN, "--epochs", "1", "--out", str(run)]) == 0
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"W_xh": Planted(str(marker))})
    for name in ("model.safetensors", "vocab.json", "config.json"):
        bad = tmp_path / f"bad-{name}"
        import shutil
        shutil.copytree(run, bad)
        (bad / name).write_bytes(payload)
        capsys.readouterr()
        assert main(["generate", str(bad)]) == 1
        assert capsys.readouterr().err.startswith("rnnkit: error:")
        assert not marker.exists()


def test_no_code_path_unpickles():
    src = Path(__file__).resolve().parent.parent / "rnnkit"
    for path in src.rglob("*.py"):
        text = path.read_text()
        assert "import pickle" not in text and "pickle.load" not in text, path
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, (path, line)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "model.safetensors"
    ckpt.atomic_write(target, b"old checkpoint")

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        ckpt.atomic_write(target, b"new checkpoint")
    assert target.read_bytes() == b"old checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]   # no temp left


def test_a_failed_checkpoint_write_is_reported_and_the_old_one_kept(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    real, calls = ckpt.atomic_write, {"n": 0}

    def flaky(path, data):  # the disk fills up at the third checkpoint (after epoch 2)
        calls["n"] += path.name == "model.safetensors"
        if path.name == "model.safetensors" and calls["n"] >= 4:
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(ckpt, "atomic_write", flaky)
    assert main(["train", *RUN, "--epochs", "5", "--out", str(run)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("rnnkit: error: could not write the checkpoint") and "kept" in err
    _, info, _ = ckpt.read_checkpoint(run / "model.safetensors")
    assert info["epoch"] == 2                      # the last good checkpoint is whole


def test_a_diverging_run_stops_with_advice_and_keeps_good_weights(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *RUN, "--epochs", "3", "--lr", "1e38", "--clip", "1e38",
                 "--out", str(run)]) == 1
    err = capsys.readouterr().err.strip()
    assert "loss became" in err and "lower --lr" in err
    assert all(torch.isfinite(t).all() for t in _weights(run).values())


def test_same_seed_gives_bitwise_identical_runs(tmp_path, capsys):
    for name in ("a", "b"):
        assert main(["train", *RUN, "--epochs", "3", "--sampling", "random",
                     "--out", str(tmp_path / name)]) == 0
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b")
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted run in a subprocess (same threads as the interrupted ones)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    proc = _start([*RUN, "--epochs", "40", "--out", str(out)])
    assert proc.wait(timeout=120) == 0, proc.communicate()
    return out


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_a_checkpoint_and_resume_finishes_the_same_run(
        signum, code, reference_run, tmp_path):
    out = tmp_path / "run"
    proc = _start([*RUN, "--epochs", "40", "--out", str(out)])
    _wait_for_epochs(out, 3, proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code
    assert err.strip().splitlines()[-1].startswith("rnnkit: error: training stopped at")
    assert f"--resume --out {out}" in err
    resumed = _start([*RUN, "--epochs", "40", "--resume", "--out", str(out)])
    assert resumed.wait(timeout=120) == 0, resumed.communicate()
    assert _metrics(out) == _metrics(reference_run)
    ref = _weights(reference_run)
    assert all(torch.equal(ref[k], v) for k, v in _weights(out).items())


def test_a_signal_after_an_epochs_last_batch_resumes_the_same_run(tmp_path, monkeypatch):
    """The checkpoint then says every batch of the epoch is done, its end not yet reached (a
    race the signal tests above hit now and then): resume runs that end and goes on."""
    from rnnkit.run import loop, policies
    assert main(["train", *RUN, "--epochs", "4", "--out", str(tmp_path / "ref")]) == 0
    lengths, real_batches, real_after = {}, loop.epoch_batches, policies.Stopping.after_step

    def batches(t, epoch):
        lengths[epoch] = len(out := real_batches(t, epoch))
        return out

    def after_step(self, state, team, cadence):
        if state.epoch == 1 and state.batch == lengths[1]:
            self.signum = signal.SIGTERM                     # as the handler would set it
        return real_after(self, state, team, cadence)
    monkeypatch.setattr(loop, "epoch_batches", batches)
    monkeypatch.setattr(policies.Stopping, "after_step", after_step)
    assert main(["train", *RUN, "--epochs", "4", "--out", str(tmp_path / "run")]) == 143
    monkeypatch.undo()
    assert main(["train", *RUN, "--epochs", "4", "--resume", "--out",
                 str(tmp_path / "run")]) == 0
    assert _metrics(tmp_path / "run") == _metrics(tmp_path / "ref")
    ref = _weights(tmp_path / "ref")
    assert all(torch.equal(ref[k], v) for k, v in _weights(tmp_path / "run").items())


def test_sigkill_mid_run_then_resume_ends_with_the_same_weights(reference_run, tmp_path):
    out = tmp_path / "run"
    args = [*RUN, "--epochs", "40", "--out", str(out), "--checkpoint-every", "0.003"]
    proc = _start(args)
    _wait_for_epochs(out, 5, proc)
    proc.kill()                                   # SIGKILL: no handler runs
    proc.wait()
    _, info, _ = ckpt.read_checkpoint(out / "model.safetensors")
    assert info["epoch"] < 40
    resumed = _start([*RUN, "--epochs", "40", "--resume", "--out", str(out)])
    assert resumed.wait(timeout=120) == 0, resumed.communicate()
    assert _metrics(out) == _metrics(reference_run)
    ref = _weights(reference_run)
    assert all(torch.equal(ref[k], v) for k, v in _weights(out).items())


def test_resume_without_a_run_is_a_usage_error(tmp_path, capsys):
    assert main(["train", "--resume", "--out", str(tmp_path / "none")]) == 2
    assert "no run to resume" in capsys.readouterr().err


def test_read_checkpoint_refuses_foreign_files(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_bytes(b"\x00" * 7)
    with pytest.raises(RnnkitError):
        ckpt.read_checkpoint(p)
