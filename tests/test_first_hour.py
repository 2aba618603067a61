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
