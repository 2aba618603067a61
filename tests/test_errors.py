"""Every user mistake: exit status, one `rnnkit: error:` line, nothing written."""
import hashlib
import json
import os

import pytest

from rnnkit.cli import main

TINY = ["--hidden", "16", "--epochs", "1", "--max-tokens", "2000", "--batch-size", "4"]


def _files(root):
    return {p: hashlib.sha1(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def _corpus(tmp_path, name, content):
    p = tmp_path / name
    if content == "DIR":
        p.mkdir()
    elif content is not None:
        p.write_bytes(content)
    return str(p)


def _check(argv, code, message, tmp_path, capsys):
    before = _files(tmp_path)
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rnnkit: error:"), err
    assert message in err[0]
    assert _files(tmp_path) == before                     # nothing written or overwritten
    assert not (tmp_path / "out").exists()


CORPUS_ERRORS = [
    ("missing.txt", None, "not found"),
    ("adir", "DIR", "is a directory"),
    ("empty.txt", b"", "is empty"),
    ("binary.bin", b"\x7fELF\x00\x01\x02", "looks binary"),
    ("latin1.txt", b"hello\ncaf\xe9\n", "not valid UTF-8 (byte offset 9, line 2)"),
    ("digits.txt", b"1234 5678 !!!\n", "no tokens after --clean d2l"),
    ("short.txt", b"the time machine " * 5, "needs at least"),
]


@pytest.mark.parametrize("name,content,message", CORPUS_ERRORS)
def test_bad_corpus_is_refused(name, content, message, tmp_path, capsys):
    path = _corpus(tmp_path, name, content)
    _check(["train", *TINY, "--corpus", path, "--out", str(tmp_path / "out")], 1, message,
           tmp_path, capsys)


def test_validation_slice_too_short_is_refused(tmp_path, capsys):
    path = _corpus(tmp_path, "c.txt", b"the time machine by h g wells " * 200)
    _check(["train", *TINY, "--corpus", path, "--val-fraction", "0.001",
            "--out", str(tmp_path / "out")], 1, "validation slice", tmp_path, capsys)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_corpus_is_refused(tmp_path, capsys):
    path = _corpus(tmp_path, "secret.txt", b"text")
    os.chmod(path, 0)
    _check(["train", *TINY, "--corpus", path, "--out", str(tmp_path / "out")], 1,
           "cannot read", tmp_path, capsys)


SETTING_ERRORS = [
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--num-steps", "-3"], "--num-steps must be positive"),
    (["--hidden", "0"], "--hidden must be positive"),
    (["--lr", "0"], "--lr must be a positive number"),
    (["--lr", "nan"], "--lr must be a positive number"),
    (["--clip", "-1"], "--clip must be a positive number"),
    (["--epochs", "-1"], "--epochs must be 0 or more"),
    (["--val-fraction", "1"], "--val-fraction must be in [0, 1)"),
    (["--val-fraction", "-0.1"], "--val-fraction must be in [0, 1)"),
    (["--cell", "mamba"], "--cell must be one of"),
    (["--impl", "magic"], "--impl must be one of"),
    (["--clean", "strip"], "--clean must be one of"),
    (["--sampling", "shuffle"], "--sampling must be one of"),
    (["--precision", "fp8"], "--precision must be one of"),
    (["--precision", "fp16"], "--precision fp16 needs --device cuda"),
    (["--batch-size", "3", "--nproc", "0"], "--nproc must be 1 or more"),
    (["--device", "cuda"], "not available"),
    (["--device", "tpu"], "--device"),
    (["--batch-size", "many"], "invalid int value"),
    (["--bogus"], "unrecognized arguments"),
    (["--prefix", ""], "--prefix must not be empty"),
]


@pytest.mark.parametrize("args,message", SETTING_ERRORS)
def test_bad_setting_is_a_usage_error(args, message, tmp_path, capsys):
    _check(["train", *TINY, *args, "--out", str(tmp_path / "out")], 2, message, tmp_path,
           capsys)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out


def test_existing_run_is_not_overwritten_without_resume_or_force(run_dir, capsys):
    capsys.readouterr()
    before = _files(run_dir)
    assert main(["train", *TINY, "--out", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rnnkit: error:") and "--resume" in err and "--force" in err
    assert _files(run_dir) == before


SAMPLING_ERRORS = [
    (["--prefix", ""], "--prefix must not be empty"),
    (["--num-chars", "-1"], "--num-chars must be between 0 and"),
    (["--num-chars", "1000000000"], "--num-chars must be between 0 and"),
    (["--temperature", "-0.5"], "--temperature"),
    (["--top-k", "0"], "--top-k must be 1 or more"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
]


@pytest.mark.parametrize("args,message", SAMPLING_ERRORS)
def test_bad_sampling_setting_is_a_usage_error(args, message, run_dir, capsys):
    capsys.readouterr()
    assert main(["generate", str(run_dir), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rnnkit: error:") and message in err[0]


def _broken_copy(run_dir, tmp_path, damage):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    damage(bad)
    return bad


def _rewrite_json(path, change):
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


DAMAGES = {
    "missing dir": (lambda d: __import__("shutil").rmtree(d), "run directory not found"),
    "missing weights": (lambda d: (d / "model.safetensors").unlink(), "missing model.safetensors"),
    "truncated weights": (lambda d: (d / "model.safetensors").write_bytes(
        (d / "model.safetensors").read_bytes()[:300]), "not a valid safetensors file"),
    "garbage weights": (lambda d: (d / "model.safetensors").write_bytes(b"\x80\x04K\x01."),
                        "not a valid safetensors file"),
    "corrupted config": (lambda d: (d / "config.json").write_text("{not json"), "corrupted"),
    "config wrong type": (lambda d: _rewrite_json(
        d / "config.json", lambda o: o["config"].update(hidden="512")), "wrong type"),
    "config unknown key": (lambda d: _rewrite_json(
        d / "config.json", lambda o: o["config"].update(evil=1)), "unknown keys"),
    "hidden mismatch": (lambda d: _rewrite_json(
        d / "config.json", lambda o: o["config"].update(hidden=32)), "does not fit"),
    "vocab mismatch": (lambda d: _rewrite_json(
        d / "vocab.json", lambda o: o["idx_to_token"].append("@")), "does not fit"),
    "vocab not a list": (lambda d: _rewrite_json(
        d / "vocab.json", lambda o: o.update(idx_to_token="abc")), "vocab"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
@pytest.mark.parametrize("command", ["generate", "eval"])
def test_broken_run_directory_is_refused(command, damage, run_dir, tmp_path, capsys):
    fn, message = DAMAGES[damage]
    bad = _broken_copy(run_dir, tmp_path, fn)
    capsys.readouterr()
    assert main([command, str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rnnkit: error:") and message in err[0], err
