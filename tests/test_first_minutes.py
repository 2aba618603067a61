"""The first five minutes with your own text: help that points somewhere real, choices that
show, defaults that fit the user's corpus, and a run that says what it is about to do."""
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rnnkit import checkpoint as ckpt
from rnnkit.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--hidden", "16", "--epochs", "2", "--batch-size", "4", "--sample-every", "1"]
NOTES = "循环神经网络（RNN）是一种处理序列数据的神经网络。隐变量记住过去的信息，输出只依赖于当前和过去的输入。\n" * 40


def _help_texts() -> list[str]:
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    return [parser.format_help()] + [p.format_help() for p in subs.choices.values()]


def test_every_pointer_in_help_and_readme_leads_somewhere_real():
    text = "\n".join(_help_texts())
    for path in re.findall(r"\b((?:README|docs|benchmarks|examples|notebooks)[\w./-]*)", text):
        assert (ROOT / path.rstrip(".,)")).exists(), path
    assert "## Speed" in (ROOT / "README.md").read_text()       # "README.md, section Speed"
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(((?!https?:|#)[^)\s]+)\)", readme):
        assert (ROOT / target).exists(), target
    for target in re.findall(r"`((?:benchmarks|examples|notebooks|docs)/[\w./-]+)`", readme):
        assert (ROOT / target).exists(), target


@pytest.mark.parametrize("flag,choices", [
    ("--cell", "{rnn,gru,lstm,mingru,minlstm,transformer}"), ("--clean", "{d2l,lower,none}"), ("--impl", "{bptt,autograd,torch,compiled}"),
    ("--token", "{char,word}"), ("--optimizer", "{sgd,adam,adamw}"),
    ("--schedule", "{constant,cosine,plateau}"), ("--sampling", "{sequential,random}"),
    ("--precision", "{fp32,bf16,fp16}")])
def test_choice_flags_list_their_choices_in_usage(flag, choices, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert f"{flag} {choices}" in " ".join(capsys.readouterr().out.split())


def test_a_corpus_of_its_own_samples_from_its_own_first_words(tmp_path, capsys):
    corpus = tmp_path / "notes.txt"
    corpus.write_text(NOTES, encoding="utf-8")
    out = tmp_path / "r"
    assert main(["train", *TINY, "--corpus", str(corpus), "--clean", "none",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "time traveller" not in text
    config, _ = ckpt.load_config_and_vocab(out)
    assert config.prefix == "循环神经网络（RNN）是一种处理" and f"from {config.prefix!r}" in text
    samples = [line for line in text.splitlines() if line.startswith(config.prefix)]
    assert len(samples) == 3                             # one an epoch, one at the end
    assert config.max_tokens == -1                       # the whole file, not the book's 10,000
    capsys.readouterr()
    assert main(["generate", str(out), "--num-chars", "5"]) == 0
    assert capsys.readouterr().out.startswith(config.prefix)
    assert main(["train", *TINY, "--corpus", str(corpus), "--clean", "none", "--prefix", "隐变量",
                 "--out", str(tmp_path / "r2")]) == 0
    assert ckpt.load_config_and_vocab(tmp_path / "r2")[0].prefix == "隐变量"


def test_the_book_keeps_the_chapters_prefix_and_its_10000_tokens(tmp_path, capsys):
    assert main(["train", *TINY, "--epochs", "1", "--out", str(tmp_path / "r")]) == 0
    config, _ = ckpt.load_config_and_vocab(tmp_path / "r")
    assert config.prefix == "time traveller" and config.max_tokens == 10_000
    assert config.end_on == "last"


def test_impl_is_chosen_for_what_was_asked_unless_the_user_chose_one(tmp_path, capsys):
    assert main(["train", *TINY, "--epochs", "1", "--layers", "2", "--out",
                 str(tmp_path / "a")]) == 0
    assert "note: --layers 2 runs on torch's layers: using --impl torch" in \
        capsys.readouterr().err
    assert ckpt.load_config_and_vocab(tmp_path / "a")[0].impl == "torch"
    assert main(["train", *TINY, "--impl", "bptt", "--embed", "8", "--out",
                 str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--impl bptt cannot run --layers, --dropout or --embed" in err[0]


def test_a_piped_corpus_is_read_once_and_recorded_as_stdin(tmp_path):
    out = tmp_path / "r"
    env = {**__import__("os").environ, "RNNKIT_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "rnnkit", "train", *TINY, "--corpus", "-",
                           "--clean", "none", "--out", str(out)], input=NOTES.encode(),
                          capture_output=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["corpus"] == "<stdin>"
    assert config["corpus_sha1"] == __import__("hashlib").sha1(NOTES.encode()).hexdigest()
    again = subprocess.run([sys.executable, "-m", "rnnkit", "eval", str(out)],
                           capture_output=True, text=True, env=env, timeout=60)
    assert again.returncode == 0 and "on the val slice" in again.stdout
    empty = subprocess.run([sys.executable, "-m", "rnnkit", "train", "--corpus", "-",
                            "--out", str(tmp_path / "e")], input=b"", capture_output=True,
                           text=False, env=env, timeout=60)
    assert empty.returncode == 1 and b"standard input is empty" in empty.stderr


def test_bench_checks_its_json_path_before_running(tmp_path, capsys):
    start = time.perf_counter()
    assert main(["bench", "--quick", "--json-out", str(tmp_path / "no" / "such" / "x.json")]) == 2
    assert "--json-out" in capsys.readouterr().err
    assert main(["bench", "--quick", "--json-out", str(tmp_path)]) == 2     # a directory
    assert time.perf_counter() - start < 5                # refused before any benchmark ran


def test_the_first_lines_say_what_the_run_will_do(tmp_path, capsys):
    corpus = tmp_path / "notes.txt"
    corpus.write_text(NOTES, encoding="utf-8")
    assert main(["train", *TINY, "--corpus", str(corpus), "--clean", "none", "--cell", "gru",
                 "--test-fraction", "0.1", "--out", str(tmp_path / "r")]) == 0
    head = capsys.readouterr().out.splitlines()[:6]
    fields = dict(line.split(None, 1) for line in head)
    assert fields["corpus"].startswith(f"{corpus} ({len(NOTES):,} characters): {len(NOTES):,} "
                                       "char tokens after --clean none, vocabulary ")
    n_test = round(len(NOTES) * 0.1)
    assert f"validation {n_test:,} · test {n_test:,} tokens" in fields["slices"]
    assert fields["model"].startswith("GRU (from scratch, hand-derived BPTT), 16 hidden")
    assert re.search(r": [\d,]+ parameters$", fields["model"])
    assert fields["device"] == "cpu, fp32"
    assert re.search(r"≈ \d+\.\d\d s an epoch \(2 batches timed\), ≈ (\d+ h )?(\d+ min )?\d+ "
                     r"(s|min) for all \d+$", fields["training"])
    assert "the run ends on its best weights" in fields["samples"]
