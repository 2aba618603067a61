import json

import pytest

from rnnkit.cli import main

TINY = ["--hidden", "32", "--epochs", "3", "--max-tokens", "3000", "--batch-size", "8",
        "--sample-every", "1"]


def test_train_generate_eval_round_trip(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "perplexity" in text and "tokens/sec on cpu" in text
    for name in ("config.json", "vocab.json", "model.safetensors", "metrics.jsonl",
                 "perplexity.png"):
        assert (out / name).stat().st_size > 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert set(metrics[0]) == {"epoch", "train_ppl", "val_ppl", "tokens_per_s"}
    assert metrics[-1]["train_ppl"] < metrics[0]["train_ppl"]

    assert main(["generate", str(out), "--prefix", "time traveller", "--num-chars", "25"]) == 0
    line = capsys.readouterr().out.rstrip("\n")
    assert line.startswith("time traveller") and len(line) == len("time traveller") + 25

    assert main(["generate", str(out), "--prefix", "the", "--num-chars", "10",
                 "--temperature", "0.8", "--num-samples", "3", "--seed", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(len(s) == 13 and s.startswith("the") for s in lines)

    assert main(["eval", str(out)]) == 0
    ev = capsys.readouterr().out
    ppl = float(ev.split()[1].rstrip(","))
    assert ppl == pytest.approx(metrics[-1]["val_ppl"], abs=6e-4)  # printed to 3 places
    assert "bits per char" in ev

    other = tmp_path / "other.txt"
    other.write_text("The Time Traveller (for so it will be convenient to speak of him) " * 20)
    assert main(["eval", str(out), "--corpus", str(other)]) == 0
    assert "bits per char on" in capsys.readouterr().out


def test_json_mode_prints_only_json_lines(tmp_path, capsys):
    assert main(["train", *TINY, "--out", str(tmp_path / "r"), "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    objs = [json.loads(line) for line in lines]          # every line parses
    assert [o["epoch"] for o in objs[:-1]] == [1, 2, 3]
    assert {"train_ppl", "val_ppl", "tokens_per_s", "device", "out", "samples"} <= set(objs[-1])
    assert objs[-1]["samples"][0].startswith("time traveller")


def test_generate_warns_about_unknown_prefix_characters(tmp_path, capsys):
    main(["train", *TINY, "--epochs", "1", "--out", str(tmp_path / "r")])
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "r"), "--prefix", "Time!", "--num-chars", "5"]) == 0
    captured = capsys.readouterr()
    assert "warning" in captured.err and "<unk>" in captured.err
    assert captured.out.startswith("Time!")


def test_vocab_prints_the_frequency_table(capsys):
    assert main(["vocab"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "# 170,580 tokens, vocabulary of 28 (with <unk>)"
    assert out[2] == '1\t" "\t29927' and out[-1] == '27\t"q"\t95'


def test_other_corpora_with_clean_none(tmp_path, capsys):
    corpus = tmp_path / "zh.txt"
    corpus.write_text("时间旅行者（为了方便起见，我们这样称呼他）正在向我们解释一个深奥的问题。\n" * 60)
    out = tmp_path / "zh"
    assert main(["train", *TINY, "--corpus", str(corpus), "--clean", "none", "--prefix", "时间",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["generate", str(out), "--prefix", "时间", "--num-chars", "8"]) == 0
    assert capsys.readouterr().out.startswith("时间")


@pytest.mark.parametrize("cell,impl,extra", [
    ("rnn", "bptt", []), ("rnn", "bptt", ["--precision", "bf16"]), ("rnn", "autograd", []),
    ("rnn", "torch", []), ("gru", "autograd", []), ("gru", "torch", []),
    ("lstm", "autograd", []), ("lstm", "torch", ["--sampling", "random"]),
    ("gru", "torch", ["--precision", "bf16"]), ("gru", "bptt", []), ("lstm", "bptt", [])])
def test_every_model_type_trains_and_generates(cell, impl, extra, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", *TINY, "--epochs", "1", "--cell", cell, "--impl", impl, *extra,
                 "--out", str(out)]) == 0
    assert main(["generate", str(out), "--num-chars", "5"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("time traveller")


def test_vocab_and_prepare_start_without_torch(tmp_path):
    """What the package docstring promises: the corpus commands never import torch."""
    import os
    import subprocess
    import sys
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world\n" * 50)
    code = ("import sys, io, contextlib\nfrom rnnkit.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    assert main(['vocab']) == 0\n"
            f"    assert main(['prepare', '--corpus', {str(corpus)!r}]) == 0\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "RNNKIT_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
