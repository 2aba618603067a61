"""Beyond the chapter: optimizers, schedules, time budgets, early stopping, presets, splits."""
import json
import signal

import pytest
import torch

from rnnkit import checkpoint as ckpt
from rnnkit.cli import main
from rnnkit.config import PRESETS, TrainConfig
from rnnkit.train import scheduled_lr

from test_checkpoint import _metrics, _start, _wait_for_epochs, _weights

TINY = ["--hidden", "32", "--max-tokens", "3000", "--batch-size", "8", "--val-fraction", "0.05",
        "--sample-every", "0"]


def test_learning_rate_schedule():
    assert scheduled_lr(1.0, step=0, progress=0, warmup=10) == pytest.approx(0.1)
    assert scheduled_lr(1.0, step=9, progress=0, warmup=10) == pytest.approx(1.0)
    assert scheduled_lr(2.0, step=99, progress=0.0, schedule="cosine") == pytest.approx(2.0)
    assert scheduled_lr(2.0, step=99, progress=0.5, schedule="cosine") == pytest.approx(1.1)
    assert scheduled_lr(2.0, step=99, progress=1.0, schedule="cosine") == pytest.approx(0.2)
    assert scheduled_lr(2.0, step=99, progress=0.3, schedule="plateau", scale=0.25) == 0.5


def test_time_budget_ends_training_and_saves_as_after_an_epoch(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", *TINY, "--epochs", "100000", "--time-budget", "1", "--json",
                 "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    _, info, _ = ckpt.read_checkpoint(out / "model.safetensors")
    assert 1 <= info["epoch"] < 100000 and info["batch"] == 0
    assert info["train_seconds"] >= 1.0 and summary["val_ppl"] is not None


def test_early_stopping_keeps_the_best_checkpoint(tmp_path, capsys):
    out = tmp_path / "r"
    # lr ~ 0: the validation loss never improves after the first epoch
    assert main(["train", *TINY, "--epochs", "50", "--lr", "1e-30", "--patience", "2",
                 "--out", str(out)]) == 0
    assert [m[0] for m in _metrics(out)] == [1, 2, 3]
    assert (out / "best.safetensors").exists()
    capsys.readouterr()
    assert main(["generate", str(out), "--weights", "best.safetensors", "--num-chars", "3"]) == 0


def test_adamw_cosine_embedding_dropout_run_and_test_split(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", *TINY, "--epochs", "3", "--cell", "lstm", "--impl", "torch",
                 "--embed", "16", "--dropout", "0.2", "--layers", "2", "--optimizer", "adamw",
                 "--lr", "0.01", "--warmup", "5", "--schedule", "cosine",
                 "--test-fraction", "0.05", "--json", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    summary = json.loads(lines[-1])
    assert summary["test_ppl"] is not None and summary["test_ppl"] < 28
    ppls = [json.loads(x)["train_ppl"] for x in lines[:-1]]
    assert ppls[-1] < ppls[0]
    assert main(["eval", str(out), "--split", "test"]) == 0
    assert "on the test slice" in capsys.readouterr().out


def test_preset_fills_defaults_and_flags_override_it():
    quality = TrainConfig(**PRESETS["quality"]).validate()
    assert quality.cell == "lstm" and quality.optimizer == "adamw"
    assert TrainConfig(**{**PRESETS["d2l"]}) == TrainConfig()


def test_adam_dropout_run_resumes_bitwise_after_sigint(tmp_path):
    args = [*TINY, "--epochs", "12", "--impl", "torch", "--cell", "gru", "--embed", "16",
            "--dropout", "0.3", "--optimizer", "adam", "--lr", "0.003",
            "--schedule", "cosine", "--warmup", "3"]
    ref = tmp_path / "ref"
    assert _start([*args, "--out", str(ref)]).wait(timeout=120) == 0
    out = tmp_path / "run"
    proc = _start([*args, "--out", str(out), "--checkpoint-every", "0.005"])
    _wait_for_epochs(out, 2, proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    assert _start([*args, "--resume", "--out", str(out)]).wait(timeout=120) == 0
    assert _metrics(out) == _metrics(ref)
    a, b = _weights(ref), _weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_takes_the_run_directory_as_its_value(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", *TINY, "--epochs", "2", "--out", str(out)]) == 0
    assert main(["train", "--resume", str(out), "--epochs", "3"]) == 0
    assert [m[0] for m in _metrics(out)] == [1, 2, 3]
    assert main(["train", "--resume", "--out", str(out), "--epochs", "4"]) == 0
    assert [m[0] for m in _metrics(out)] == [1, 2, 3, 4]
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--out", str(tmp_path / "other")]) == 2
    assert "name different runs" in capsys.readouterr().err


def test_a_loss_that_explodes_but_stays_finite_is_divergence(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", *TINY, "--epochs", "3", "--lr", "1e30", "--clip", "1e30",
                 "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "loss became" in err[0] and "lower --lr" in err[0]
    weights = _weights(out)                    # the last good checkpoint: finite, unchanged
    assert all(torch.isfinite(t).all() for t in weights.values())
    _, info, _ = ckpt.read_checkpoint(out / "model.safetensors")
    assert info["epoch"] == 0


def assert_stopped_run_resumes_bitwise(config, tmp_path, monkeypatch, at: tuple[int, int]):
    """`config` trained whole, and stopped after batch `at` = (epoch index, batch) then
    resumed: every epoch's perplexities and the final weights are bitwise the same."""
    import io
    from rnnkit import Run
    from rnnkit.checkpoint import read_checkpoint
    from rnnkit.errors import Interrupted
    from rnnkit.run.policies import Stopping
    Run.new(config, tmp_path / "whole").train(stdout=io.StringIO())
    real = Stopping.after_step

    def stop_once(self, state, team, cadence):
        reason, due = real(self, state, team, cadence)
        return ("signal" if (state.epoch, state.batch) == at else reason), due
    monkeypatch.setattr(Stopping, "after_step", stop_once)
    with pytest.raises(Interrupted):
        Run.new(config, tmp_path / "part").train(stdout=io.StringIO())
    monkeypatch.setattr(Stopping, "after_step", real)
    Run.resume(tmp_path / "part").train(stdout=io.StringIO())

    def figures(name):
        rows = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [(r["epoch"], r["train_ppl"], r["val_ppl"]) for r in map(json.loads, rows)]
    assert figures("part") == figures("whole") and len(figures("whole")) == config.epochs
    weights = [read_checkpoint(tmp_path / n / "model.safetensors")[0] for n in ("part", "whole")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[1])


def test_a_run_stopped_mid_epoch_resumes_to_bitwise_the_same_figures(tmp_path, monkeypatch):
    """Stopped after batch 7 of epoch 2 (of 10 a epoch), then resumed: every epoch's
    perplexities and the final weights are bitwise those of a run that never stopped (the
    epoch's loss is summed in the same order, whatever the checkpoint split it into)."""
    config = TrainConfig(hidden=32, epochs=3, max_tokens=3000, batch_size=8, sample_every=0,
                         val_fraction=0.05)
    assert_stopped_run_resumes_bitwise(config, tmp_path, monkeypatch, at=(1, 7))
