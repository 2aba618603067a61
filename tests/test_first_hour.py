"""Issue #26's first rules, each a general one (not a special case): no setting NaN or
infinite; no empty path; no silent abbreviations, and the closest flag offered; --debug where
a user puts it; a missing slice named; sampling at the ends of its legal ranges."""
import pytest

from rnnkit.cli import main

TINY = ["--hidden", "16", "--epochs", "1", "--max-tokens", "2000", "--sample-every", "0"]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rnnkit: error:"), err
    return err[0]


@pytest.mark.parametrize("flag", ["--weight-decay", "--lr", "--clip", "--dropout",
                                  "--val-fraction", "--test-fraction", "--time-budget"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_no_setting_is_nan_or_infinite(flag, value, tmp_path, capsys):
    assert main(["train", *TINY, f"{flag}={value}", "--out", str(tmp_path / "r")]) == 2
    line = _one_line(capsys)
    assert flag in line and ("finite" in line or "positive" in line or "must be" in line)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args", [["train", "--out", ""], ["train", "--corpus", ""],
                                  ["train", "--resume", ""], ["eval", "x", "--corpus", ""],
                                  ["vocab", "--corpus", ""], ["prepare", "--corpus", ""],
                                  ["export", "x", "--out", ""], ["bench", "--json-out", ""]])
def test_an_empty_path_is_refused_before_anything_is_written(args, tmp_path, capsys,
                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    assert "must name a file or directory, not ''" in _one_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_a_mistyped_flag_gets_the_closest_and_abbreviations_are_refused(tmp_path, capsys):
    assert main(["train", "--epocs", "5", "--out", str(tmp_path / "r")]) == 2
    assert "did you mean --epochs?" in _one_line(capsys)
    assert main(["train", "--hid", "64", "--out", str(tmp_path / "r")]) == 2
    line = _one_line(capsys)
    assert "unrecognized arguments: --hid" in line and "--hidden" in line
    assert not (tmp_path / "r").exists()


def test_debug_works_after_the_subcommand(tmp_path, capsys):
    assert main(["train", "--cell", "x", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().endswith("(see 'rnnkit train --help')")
    assert main(["train", *TINY, "--out", str(tmp_path / "r"), "--debug"]) == 0


def test_a_split_the_run_does_not_have_is_named(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--split", "test"]) == 2
    assert "no test slice (it trained with --test-fraction 0)" in _one_line(capsys)


@pytest.mark.parametrize("args", [["--temperature", "1", "--top-p", "1e-50"],
                                  ["--temperature", "1", "--top-p", "5e-324"],
                                  ["--temperature", "1e-300"], ["--temperature", "1e300"],
                                  ["--temperature", "1", "--top-k", "1"]])
def test_sampling_at_the_ends_of_its_legal_ranges(args, tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["generate", str(run), "--num-chars", "30", "--seed", "1", *args]) == 0
    text = capsys.readouterr().out.splitlines()[0]
    assert len(text) - 4 * text.count("<unk>") == len("time traveller") + 30   # 30 tokens


def test_a_feature_without_its_extra_says_what_to_install(tmp_path, capsys, monkeypatch):
    import sys
    run = tmp_path / "r"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "onnx", None)            # as if onnx were not installed
    assert main(["export", str(run), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "pip install 'rnnkit[onnx]'" in _one_line(capsys)
    assert not (tmp_path / "m.onnx").exists()


def test_a_file_given_as_a_run_is_named_a_file(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    assert main(["generate", str(notes)]) == 1
    assert "is a file, not a run directory" in _one_line(capsys)


def test_a_run_that_stops_early_says_so_and_when(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", "--hidden", "16", "--max-tokens", "2000", "--sample-every", "0",
                 "--epochs", "50", "--lr", "1e-30", "--patience", "1", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    # (weights that cannot move: the second epoch is no better than the first)
    assert "stopped early after epoch 2 of 50: no better validation for 1 epochs (--patience)" \
        in out.splitlines()
    # resumed to train longer, it gets its patience again, and says so
    assert main(["train", "--resume", "--out", str(run), "--epochs", "60", "--patience", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert ("resumed     at epoch 3, batch 1; it had stopped early (1 epoch without a better "
            "validation), so --patience 2 counts again from here") in out
    assert "stopped early after epoch 4 of 60: no better validation for 2 epochs (--patience)" \
        in out
    assert main(["train", "--hidden", "16", "--max-tokens", "2000", "--sample-every", "0",
                 "--time-budget", "0.01", "--json", "--out", str(tmp_path / "t")]) == 0
    import json
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["stopped"]["reason"] == "time" and summary["stopped"]["epoch"] < 500


def test_a_run_in_use_says_so_before_anything_else(tmp_path, capsys):
    """Not "already holds a run; pass --resume or --force", which would then fail too."""
    import os
    from rnnkit.files import FileLock
    from rnnkit.run.rundir import lock_path
    run = tmp_path / "r"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    capsys.readouterr()
    lock = FileLock(lock_path(run), owner=f"pid {os.getpid()}").acquire(wait=False)
    try:
        for args in ([], ["--force"], ["--resume"]):
            assert main(["train", *TINY, *args, "--out", str(run)]) == 1
            assert f"in use by another rnnkit train (pid {os.getpid()})" in _one_line(capsys)
    finally:
        lock.release()
    assert main(["train", *TINY, "--resume", "--out", str(run), "--epochs", "2"]) == 0


def test_eval_speaks_json_with_the_figures_and_settings(tmp_path, capsys):
    import json
    import math
    run = tmp_path / "r"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    assert main(["eval", str(run)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["eval", str(run), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert line.startswith(f"perplexity {got['perplexity']:.3f}, {got['bits_per_token']:.4f} bits")
    assert math.isclose(got["perplexity"], math.exp(got["nats_per_token"]))
    assert got["tokens"] > 0 and got["settings"]["split"] == "val"
    assert got["settings"]["weights"] == "last"
    assert main(["eval", str(run), "--samples", "2", "--num-chars", "30", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["samples"] == 2 and got["settings"]["seed"] == 0
    assert 0 <= got["copied_share"]["mean"] <= got["copied_share"]["max"] <= 1


def test_beam_samples_with_newlines_stay_one_json_line_each(tmp_path, capsys):
    import json
    notes = tmp_path / "notes.txt"
    notes.write_text("ab\ncd\n" * 400)
    run = tmp_path / "r"
    assert main(["train", *TINY, "--corpus", str(notes), "--clean", "none", "--prefix", "a",
                 "--val-fraction", "0.1", "--lr", "3", "--epochs", "30",
                 "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["generate", str(run), "--prefix", "a", "--beam", "4", "--num-samples", "3",
                 "--num-chars", "8", "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    samples = [json.loads(line) for line in lines]
    assert len(samples) == 3 and any("\n" in s["text"] for s in samples)
    assert [s["log_prob"] for s in samples] == sorted((s["log_prob"] for s in samples),
                                                      reverse=True)


def test_durations_read_as_a_person_says_them():
    from rnnkit.run.report import duration
    assert [duration(s) for s in (0.4, 42, 185, 7800, float("nan"))] == \
        ["0 s", "42 s", "3 min 5 s", "2 h 10 min", "?"]


INTERRUPT_WHILE_IMPORTING = """
import importlib.abc, os, signal, sys
class Interrupt(importlib.abc.MetaPathFinder):   # Ctrl-C just as the CLI's imports begin
    def find_spec(self, name, path=None, target=None):
        if name == "rnnkit.cli":
            os.kill(os.getpid(), signal.SIGINT)
sys.meta_path.insert(0, Interrupt())
sys.argv = ["rnnkit", "train"]
from rnnkit.__main__ import run
sys.exit(run())
"""


def test_ctrl_c_while_the_command_imports_is_one_line_and_exit_130():
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-c", INTERRUPT_WHILE_IMPORTING],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.splitlines() == ["rnnkit: error: interrupted"]


@pytest.mark.parametrize("delay", [0.3, 0.7, 1.5])
def test_ctrl_c_at_any_moment_is_one_line_and_exit_130(delay, tmp_path):
    """During the imports, the setup or the training alike."""
    import signal
    import subprocess
    import sys
    import time
    proc = subprocess.Popen([sys.executable, "-m", "rnnkit", "train", "--epochs", "3",
                             "--max-tokens", "20000", "--out", str(tmp_path / "r")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1].strip().splitlines()
    assert proc.returncode == 130, err
    assert len(err) == 1 and err[0].startswith("rnnkit: error: "), err


def test_small_generation_steps_run_on_one_thread(tmp_path, capsys, monkeypatch):
    """One stream, a beam or a few samples: one torch thread (perf.threads_for), so that a
    busy core does not stall every step; many streams keep the cores."""
    import torch

    from rnnkit.perf import SMALL_ROWS, threads_for
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)        # as on a 2-core machine
    assert threads_for(1) == threads_for(SMALL_ROWS) == 1
    assert threads_for(SMALL_ROWS + 1) == 2
    run = tmp_path / "r"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    for args in (["--num-chars", "5"], ["--beam", "4", "--num-chars", "5"],
                 ["--num-samples", "64", "--temperature", "1", "--num-chars", "5"]):
        assert main(["generate", str(run), *args]) == 0
    assert seen == [1, 1, 2]
