"""The quality preset fits the corpus and the budget, and a run ends on its best model."""
import json

import pytest
import torch

from rnnkit import checkpoint as ckpt
from rnnkit.cli import main
from rnnkit.generate import generate_ids
from rnnkit.recipe import (KINDS, MIN_EPOCHS, PARAMS_PER_TOKEN, parameters, quality_settings,
                           tokens_per_second)

RATE = 1.1e11                          # this machine's measured training FLOP/s


@pytest.mark.parametrize("kind", [None, "gru", "lstm", "mingru", "minlstm", "transformer"])
@pytest.mark.parametrize("tokens,vocab,budget", [
    (90_000, 28, 60), (161_000, 80, 240), (900_000, 65, 86), (900_000, 65, 600),
    (100_000_000, 200, 3600), (50_000, 5000, 120)])
def test_the_recipe_keeps_its_rule_on_small_and_large_corpora(tokens, vocab, budget, kind):
    s = quality_settings(tokens, vocab, budget, RATE, kind=kind)
    assert s["cell"] == (kind or s["cell"]) and (s["why"] is None) == (kind is not None)
    kind = s["cell"]
    params = parameters(kind, s["hidden"], vocab)
    assert params <= PARAMS_PER_TOKEN * tokens or s["hidden"] == 64          # step 1
    seen = tokens_per_second(s["hidden"], vocab, RATE, kind=kind) * budget
    assert seen >= min(MIN_EPOCHS * tokens, KINDS[kind]["tokens_per_parameter"] * params) \
        or s["hidden"] == 64                                                 # step 2
    assert (0.1 if kind in ("gru", "lstm") else 0) <= s["dropout"] <= 0.5 and s["patience"] > 0
    assert s["layers"] == KINDS[kind]["layers"] and s["num_steps"] == KINDS[kind]["num_steps"]
    assert s["token_shift"] == (kind in ("mingru", "minlstm"))


def test_the_recipe_grows_with_the_data_and_the_budget():
    widths = [quality_settings(n, 65, 10_000, RATE)["hidden"]
              for n in (20_000, 200_000, 2_000_000)]
    assert widths == sorted(widths) and widths[0] < widths[-1]
    short, long = (quality_settings(1_000_000, 65, b, RATE)["hidden"] for b in (60, 1800))
    assert short < long
    small, big = (quality_settings(n, 65, 0, RATE)["dropout"] for n in (30_000, 3_000_000))
    assert small > big                   # more parameters per token: more dropout


def _random_text(n: int) -> str:
    """Random letters: nothing to learn but their frequencies, so a model that memorises its
    training slice gets worse on the held-out one after a few epochs."""
    import random
    rng = random.Random(0)
    return "".join(rng.choice("abcdefghij") for _ in range(n))


def test_a_run_ends_on_its_best_epoch_and_keeps_the_last(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text(_random_text(4000))
    out = tmp_path / "r"
    assert main(["train", "--corpus", str(corpus), "--cell", "gru", "--hidden", "128",
                 "--optimizer", "adam", "--lr", "0.01", "--epochs", "12", "--batch-size", "8",
                 "--sample-every", "0", "--json", "--out", str(out)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    summary, vals = lines[-1], [m["val_ppl"] for m in lines[:-1]]
    best_epoch = vals.index(min(vals)) + 1
    assert best_epoch < len(vals)                        # validation got worse at the end
    assert summary["end_on"] == "best" and summary["best_epoch"] == best_epoch
    assert summary["val_ppl"] == min(vals) and summary["last_val_ppl"] == vals[-1]
    best = ckpt.read_checkpoint(out / "best.safetensors")[0]
    last = ckpt.read_checkpoint(out / "model.safetensors")[0]
    model, _, _ = ckpt.load_run(out)                     # the default: the best epoch's
    assert all(torch.equal(model.state_dict()[k], best[k]) for k in best)
    model, _, _ = ckpt.load_run(out, weights="last")
    assert all(torch.equal(model.state_dict()[k], last[k]) for k in last)
    for weights, expected in ((None, min(vals)), ("last", vals[-1]), ("best", min(vals))):
        assert main(["eval", str(out)] + (["--weights", weights] if weights else [])) == 0
        ppl = float(capsys.readouterr().out.split()[1].rstrip(","))
        assert ppl == pytest.approx(expected, abs=6e-4)
    for weights in ("best", "last"):                     # generate uses the same weights
        model, vocab, config = ckpt.load_run(out, weights=weights)
        ids = vocab[list(config.prefix)]
        expected = config.prefix + "".join(vocab.to_tokens(
            generate_ids(model, ids, 30)[0].tolist()))
        assert main(["generate", str(out), "--num-chars", "30"]
                    + (["--weights", "last"] if weights == "last" else [])) == 0
        assert capsys.readouterr().out.rstrip("\n") == expected
    assert main(["train", "--resume", str(out), "--epochs", "13"]) == 0   # resumes the last state
    _, info, _ = ckpt.read_checkpoint(out / "model.safetensors")
    assert info["epoch"] == 13


def test_the_preset_chooses_a_kind_says_why_and_sizes_the_one_asked_for(tmp_path, capsys):
    from rnnkit.cli import new_config
    corpus = tmp_path / "c.txt"
    corpus.write_text(_random_text(20_000))
    config = new_config({"corpus": str(corpus), "time_budget": 300}, "quality")
    note = capsys.readouterr().err
    assert config.cell in KINDS and config.impl == "torch"
    assert "--preset quality chose" in note and "--cell picks another kind" in note
    gpt = new_config({"corpus": str(corpus), "cell": "transformer"}, "quality")
    assert "chose" not in capsys.readouterr().err             # asked for: nothing to explain
    assert (gpt.cell, gpt.impl, gpt.layers, gpt.num_steps, gpt.embed, gpt.lr) == (
        "transformer", "torch", 4, 64, 0, 1e-3)
    gru = new_config({"corpus": str(corpus), "cell": "gru", "time_budget": 60}, "quality")
    assert (gru.cell, gru.impl, gru.embed, gru.layers) == ("gru", "torch", 64, 1)  # as the LSTM
    shifted = new_config({"corpus": str(corpus), "cell": "minlstm", "time_budget": 60}, "quality")
    plain = new_config({"corpus": str(corpus), "cell": "minlstm", "token_shift": False}, "quality")
    assert shifted.token_shift and not plain.token_shift and not gpt.token_shift


def test_the_quality_preset_mixes_in_an_ngram_model_and_the_chapter_does_not(tmp_path):
    from rnnkit.cli import new_config
    corpus = tmp_path / "c.txt"
    corpus.write_text(_random_text(20_000))
    assert new_config({"corpus": str(corpus)}, "quality").ngram == 8
    assert new_config({"corpus": str(corpus), "ngram": 0}, "quality").ngram == 0
    assert new_config({}).ngram == 0                     # the chapter's run is unchanged


def test_the_closing_samples_are_what_generate_prints_even_with_dropout(tmp_path, capsys):
    corpus, out = tmp_path / "c.txt", tmp_path / "r"
    corpus.write_text(_random_text(4000))
    assert main(["train", "--corpus", str(corpus), "--cell", "lstm", "--hidden", "32",
                 "--embed", "8", "--dropout", "0.5", "--optimizer", "adam", "--lr", "0.01",
                 "--epochs", "2", "--batch-size", "8", "--prefix", "abc", "--json",
                 "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert main(["generate", str(out), "--prefix", "abc", "--num-chars", "50"]) == 0
    assert summary["samples"][0] == capsys.readouterr().out.rstrip("\n")   # no dropout in it
