"""The Kneser–Ney model and its mixture with the network: exact against a plain reference,
causal, fitted on validation, saved safely, and used by eval, generate, the lab and resume."""
import collections
import copy
import json
import math
import random

import numpy as np
import pytest
import torch

from rnnkit import checkpoint as ckpt
from rnnkit import fastloop
from rnnkit.cli import main
from rnnkit.config import TrainConfig
from rnnkit.models import build_model
from rnnkit.ngram import (BUCKETS, KneserNey, NgramMixture, count_tables, fit_mixture,
                          fit_weights, max_context)
from rnnkit.train import evaluate


def reference_kn(train: list[int], vocab_size: int, order: int):
    """Interpolated Kneser–Ney written plainly from its definition (dicts of counts):
    p(w | h) for a history list h; the top order counts n-grams, the lower ones count the
    distinct tokens that precede each n-gram."""
    raw = [collections.defaultdict(collections.Counter) for _ in range(order + 1)]
    for k in range(order + 1):
        for i in range(k, len(train)):
            raw[k][tuple(train[i - k:i])][train[i]] += 1
    cont = [collections.defaultdict(collections.Counter) for _ in range(order)]
    for k in range(1, order + 1):
        for h, c in raw[k].items():
            for w in c:
                cont[k - 1][h[1:]][w] += 1

    def discount(k):
        n = collections.Counter(v for c in raw[k].values() for v in c.values())
        return n[1] / (n[1] + 2 * n[2]) if n[1] and n[2] else 0.75

    def prob(h: list[int], w: int) -> float:
        p = 1 / vocab_size
        for k in range(order + 1):
            if len(h) < k:
                break
            table = raw[k] if k == order else cont[k]
            c = table.get(tuple(h[len(h) - k:]))
            if c:
                total, d = sum(c.values()), discount(k)
                p = max(c.get(w, 0) - d, 0) / total + d * len(c) / total * p
        return p
    return prob


def _ids(n: int, vocab_size: int, seed: int = 0) -> np.ndarray:
    """An order-2 source: each pair of tokens allows three next tokens."""
    rng = np.random.default_rng(seed)
    nxt = rng.integers(0, vocab_size, (vocab_size, vocab_size, 3))
    out = [1, 2]
    for _ in range(n - 2):
        out.append(int(nxt[out[-2], out[-1], rng.integers(3)]))
    return np.array(out, dtype=np.int64)


def _histories(ids: np.ndarray, length: int) -> np.ndarray:
    """Row t: the `length` ids before position t, −1 before the text begins."""
    padded = np.r_[np.full(length, -1), ids]
    return np.lib.stride_tricks.sliding_window_view(padded, length)[:len(ids)]


@pytest.mark.parametrize("order", [1, 2, 3])
def test_kneser_ney_matches_its_plain_definition(order):
    V = 7
    train, held = _ids(600, V), _ids(80, V, seed=1)
    raw, cont = count_tables(train, V, order)
    kn = KneserNey(cont[:order] + [raw[order]])
    ref = reference_kn(train.tolist(), V, order)
    hist = _histories(held, order)
    got = kn.target_probs(hist, held)
    want = [ref([int(x) for x in h if x >= 0], int(w)) for h, w in zip(hist, held)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    dist = kn.next_probs(hist)                                 # (N, V): every token at once
    np.testing.assert_allclose(dist.sum(1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(dist[np.arange(len(held)), held], got, rtol=1e-12)


@pytest.mark.parametrize("order", [1, 3, 6])
def test_generations_unrolled_counts_are_the_recursions_and_one_row_is_many_rows(order):
    """row_probs/rows_probs sum the same terms top-down: next_probs to 1e-15, and the one-row
    and many-row paths bitwise alike, whatever rows share a step (so the cache is too)."""
    V = 9
    train, held = _ids(3000, V), _ids(400, V, seed=1)
    raw, cont = count_tables(train, V, order)
    kn = KneserNey(cont[:order] + [raw[order]])
    hist = np.r_[_histories(held, order), _ids(60 * order, V, seed=2).reshape(60, order)]
    hist[-5:, 0] = -1                                       # a longest context before the text
    many, top = kn.rows_probs(hist)
    np.testing.assert_allclose(many, kn.next_probs(hist), rtol=0, atol=1e-15)
    assert np.array_equal(np.minimum(np.log2(1 + top).astype(np.int64), BUCKETS - 1),
                          kn.evidence(hist))      # the λ bucket `counted` takes from `top`
    for i in range(len(hist)):
        one, count = kn.row_probs(hist[i].tolist())
        assert np.array_equal(one, many[i]) and count == top[i]
        one, count = kn.row_probs_numpy(hist[i].tolist())
        assert np.array_equal(one, many[i]) and count == top[i]
    assert np.array_equal(kn.rows_probs(hist[::-1])[0], many[::-1])
    reference, reference_top = kn.rows_probs_numpy(hist)     # what fastloop.kn_rows repeats
    assert np.array_equal(reference, many) and np.array_equal(reference_top, top)
    longer = np.c_[_ids(len(hist), V, seed=3), hist]          # histories longer than the order
    assert np.array_equal(kn.rows_probs(longer)[0], many)
    assert copy.deepcopy(kn).rows_probs(hist)[0].tobytes() == many.tobytes()


def test_keys_never_overflow_for_large_vocabularies():
    assert max_context(28) >= 8 and max_context(5000) == 4 and max_context(10 ** 6) == 2
    V = 5000
    ids = np.random.default_rng(0).integers(V - 50, V, 3000)   # the largest ids
    kn = KneserNey.fit(ids, V, max_context(V))
    hist = _histories(ids[:100], max_context(V))
    assert (kn.target_probs(hist, ids[:100]) > 1e-3).mean() > 0.5
    assert np.array_equal(kn.rows_probs(hist)[0], kn.rows_probs_numpy(hist)[0])


def test_the_weights_go_to_the_better_part():
    rng = np.random.default_rng(0)
    bucket = rng.integers(0, 3, 2000)
    good, bad = np.full(2000, 0.9), np.full(2000, 0.01)
    assert (fit_weights(good, bad, bucket)[:3] > 0.98).all()           # the network knows
    assert (fit_weights(bad, good, bucket)[:3] < 0.02).all()           # the counts know
    a, b = rng.uniform(0.01, 1, 2000), rng.uniform(0.01, 1, 2000)

    def loglik(w, p_net, p_kn):
        return np.log(w[bucket] * p_net + (1 - w[bucket]) * p_kn).sum()
    lam = fit_weights(a, b, bucket)
    assert loglik(lam, a, b) >= max(loglik(np.full(BUCKETS, x), a, b)
                                    for x in np.linspace(0, 1, 21)) - 1e-6
    # parts that predict alike (EM crawls here): the optimum, even on a boundary, exactly
    close = a * rng.uniform(0.97, 1.03, 2000)
    lam = fit_weights(close, a, bucket)
    assert loglik(lam, close, a) >= max(loglik(np.full(BUCKETS, x), close, a)
                                        for x in (0, 1e-6, 0.5, 1 - 1e-6)) - 1e-9


def _mixture(vocab_size=11, cell="lstm", order=3):
    torch.manual_seed(0)
    cfg = TrainConfig(cell=cell, impl="torch", hidden=16, embed=8)
    network = build_model(vocab_size, cfg).eval()
    ids = _ids(3000, vocab_size)
    return fit_mixture(network, ids[:2400], ids[2400:], vocab_size, order, batch_size=4,
                       num_steps=10), ids


def test_the_mixture_is_causal_and_carries_its_history_across_windows():
    mixture, ids = _mixture()
    X = torch.as_tensor(ids[:40])[None, :]                                 # (1, 40)
    whole, _ = mixture(X, mixture.begin_state(1))                          # (40, 1, V)
    changed = X.clone()
    changed[0, 25:] = (changed[0, 25:] + 1) % 11
    out, _ = mixture(changed, mixture.begin_state(1))
    torch.testing.assert_close(out[:25], whole[:25], rtol=0, atol=0)       # t < 25: unchanged
    state, pieces = mixture.begin_state(1), []
    for piece in X.split(7, dim=1):                                        # window by window
        logits, state = mixture(piece, state)
        pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces), whole)
    np.testing.assert_allclose(torch.logsumexp(whole, -1).numpy(), 0, atol=1e-5)  # normalised


def test_the_mixture_beats_both_parts_on_validation_and_the_fit_is_what_evaluate_scores():
    mixture, ids = _mixture()
    r = mixture.report
    assert r["val_ppl"] <= min(r["network_val_ppl"], r["ngram_val_ppl"]) * (1 + 1e-6)
    assert r["val_ppl"] < 0.9 * r["network_val_ppl"]          # a table-like source: counts win
    loss, tokens = evaluate(mixture, ids[2400:], batch_size=4, num_steps=10)
    assert math.exp(loss / tokens) == pytest.approx(r["val_ppl"], rel=1e-5)


def test_the_lab_trace_scores_with_the_mixture():
    mixture, ids = _mixture(cell="gru")
    X = torch.as_tensor(ids[:50])[None, :]
    net_logits, _ = mixture.network(X, mixture.network.begin_state(1))
    want, _ = mixture(X, mixture.begin_state(1))
    got = mixture.mix_trace(net_logits[:, 0].detach().numpy(), ids[:50].tolist())
    np.testing.assert_allclose(got, want[:, 0].numpy(), atol=1e-6)


# ---- through the CLI ---------------------------------------------------------------------
def _corpus(tmp_path, n=6000):
    rng = random.Random(0)
    words = ["the", "time", "machine", "traveller", "said", "and", "of", "a", "was"]
    text = " ".join(rng.choice(words) for _ in range(n // 5))
    path = tmp_path / "c.txt"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    import io
    from rnnkit import train_run
    from rnnkit.cli import new_config
    tmp = tmp_path_factory.mktemp("ngram")
    corpus, out = _corpus(tmp), tmp / "run"
    config = new_config({"corpus": str(corpus), "cell": "gru", "hidden": 32, "optimizer": "adam",
                         "lr": 0.01, "epochs": 3, "batch_size": 8, "num_steps": 20, "ngram": 4})
    summary = train_run(config, out, json_lines=True, stdout=io.StringIO())
    (tmp / "summary.json").write_text(json.dumps(summary))      # beside the run, not in it
    return out


def test_a_run_with_ngram_saves_it_and_eval_reproduces_the_summary(mixed_run, capsys):
    metrics = [json.loads(x) for x in (mixed_run / "metrics.jsonl").read_text().splitlines()]
    assert (mixed_run / "ngram.safetensors").exists() and len(metrics) == 3
    model, _, config = ckpt.load_run(mixed_run)
    assert isinstance(model, NgramMixture) and config.ngram == 4
    assert main(["eval", str(mixed_run), "--split", "val"]) == 0
    mixed = float(capsys.readouterr().out.split()[1].rstrip(","))
    assert main(["eval", str(mixed_run), "--split", "val", "--no-ngram"]) == 0
    alone = float(capsys.readouterr().out.split()[1].rstrip(","))
    assert mixed < alone
    summary = json.loads((mixed_run.parent / "summary.json").read_text())
    assert mixed == pytest.approx(summary["val_ppl"], abs=6e-4)    # eval prints 3 decimals
    assert alone == pytest.approx(summary["network_val_ppl"], abs=6e-4)
    assert alone == pytest.approx(min(m["val_ppl"] for m in metrics), abs=6e-4)


def test_held_out_rows_read_the_text_before_them():
    from rnnkit.ngram import preceding
    ids, before = np.arange(10, 20), np.arange(5)
    got = preceding(ids, np.array([0, 1, 6]), 3, before) - 1               # −1: nothing
    assert got.tolist() == [[2, 3, 4], [3, 4, 10], [13, 14, 15]]
    assert (preceding(ids, np.array([1]), 3) - 1).tolist() == [[-1, -1, 10]]


def test_generate_samples_and_searches_the_mixture(mixed_run, capsys):
    for extra in ([], ["--beam", "3"], ["--temperature", "0.7", "--seed", "1"]):
        assert main(["generate", str(mixed_run), "--prefix", "the ", "--num-chars", "30",
                     *extra]) == 0
        text = capsys.readouterr().out.rstrip("\n")
        assert text.startswith("the ") and len(text) == 34
    assert main(["generate", str(mixed_run), "--prefix", "the ", "--num-chars", "30",
                 "--no-ngram"]) == 0


def test_a_tampered_ngram_file_is_refused_in_one_line(mixed_run, tmp_path, capsys):
    import shutil
    from safetensors.torch import load_file, save_file
    run = tmp_path / "run"
    shutil.copytree(mixed_run, run)
    path = run / "ngram.safetensors"
    tensors = load_file(path)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        meta = json.loads(f.read(n))["__metadata__"]
    tensors["keys.1"] = tensors["keys.1"].flip(0)                          # out of order
    save_file(tensors, path, metadata=meta)
    assert main(["generate", str(run), "--num-chars", "5"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "ngram.safetensors" in err and "out of order" in err
    save_file(load_file(mixed_run / "ngram.safetensors"), path,
              metadata={**meta, "weights": json.dumps([2.0] * BUCKETS)})   # λ out of [0, 1]
    assert main(["eval", str(run)]) == 1
    assert "mixing weights" in capsys.readouterr().err


def test_resume_refits_the_ngram_for_the_new_end(mixed_run, tmp_path, capsys):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(mixed_run, run)
    before = (run / "ngram.safetensors").read_bytes()
    assert main(["train", "--resume", str(run), "--epochs", "4", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (run / "ngram.safetensors").read_bytes() != before
    assert summary["val_ppl"] < summary["network_val_ppl"] and summary["ngram"]["order"] >= 1


def test_export_is_the_network_alone_and_says_so(mixed_run, tmp_path, capsys):
    assert main(["export", str(mixed_run), "--out", str(tmp_path / "m.onnx")]) == 0
    assert "network alone" in capsys.readouterr().err


def test_the_lab_generates_streams_and_scores_with_the_mixture(mixed_run, capsys):
    import socket
    import subprocess
    import sys

    import httpx
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "rnnkit", "serve", str(mixed_run),
                             "--port", str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("rnnkit lab: http://")
        base = f"http://127.0.0.1:{port}/api/runs/run"
        model, vocab, _ = ckpt.load_run(mixed_run)
        listed = httpx.get(f"http://127.0.0.1:{port}/api/runs").json()["runs"][0]
        assert listed["ngram"] == model.ngram.order + 1                  # an n-gram, n ≤ 4 + 1
        summary = json.loads((mixed_run.parent / "summary.json").read_text())
        assert listed["ngram_val_ppl"] == pytest.approx(summary["val_ppl"], rel=1e-5)
        text = "the time machine said the traveller"
        body = httpx.post(f"{base}/score", json={"text": text}).json()
        ids = vocab[list(text)]
        with torch.no_grad():
            logp, _ = model(torch.tensor([ids]), model.begin_state(1))       # (T, 1, V)
        want = logp[torch.arange(len(ids) - 1), 0, torch.tensor(ids[1:])].exp()
        np.testing.assert_allclose(body["prob"][1:], want.numpy(), atol=2e-6)
        assert main(["generate", str(mixed_run), "--prefix", "the ", "--num-chars", "40"]) == 0
        printed = capsys.readouterr().out.rstrip("\n")
        got = httpx.post(f"{base}/generate", json={"prefix": "the ", "num_chars": 40}).json()
        assert got["samples"][0]["text"] == printed
        events = httpx.get(f"{base}/stream", params={"prefix": "the ", "num_chars": 40}).text
        done = [json.loads(line[6:]) for line in events.splitlines()
                if line.startswith("data: ") and '"samples"' in line]
        assert done[-1]["samples"] == [printed]
    finally:
        proc.terminate()
        proc.wait(10)


def test_without_a_validation_slice_there_is_nothing_to_fit_and_the_run_says_so(tmp_path,
                                                                                 capsys):
    out = tmp_path / "run"
    assert main(["train", "--corpus", str(_corpus(tmp_path, 3000)), "--hidden", "16",
                 "--epochs", "1", "--val-fraction", "0", "--ngram", "3", "--batch-size", "4",
                 "--out", str(out)]) == 0
    assert "--ngram needs a validation slice" in capsys.readouterr().out
    assert not (out / "ngram.safetensors").exists()
    assert main(["generate", str(out), "--num-chars", "5"]) == 0


def test_generation_with_the_cached_counts_is_exactly_the_uncached_mixture(monkeypatch):
    """The compiled lookups, the cache of counted contexts, the one-row dense counts and the
    one-step windows are shortcuts: step by step gives bitwise the log-probabilities of one
    whole read."""
    from rnnkit import ngram
    from rnnkit.generate import beam_search, generate_ids
    mixture, ids = _mixture(order=3)
    X = torch.as_tensor(ids[:60])[None, :]                                 # (1, 60)
    monkeypatch.setattr(ngram, "CACHED_ROWS_AT_ONCE", 0)                  # nothing cached
    whole, _ = mixture(X, mixture.begin_state(1))                          # (60, 1, V)
    greedy = generate_ids(mixture, ids[:5].tolist(), 80)
    sampled = generate_ids(mixture, ids[:5].tolist(), 80, num_samples=3, temperature=1.0, seed=1)
    beams = beam_search(mixture, ids[:5].tolist(), 20, beam=4)
    monkeypatch.setattr(ngram, "CACHED_ROWS_AT_ONCE", 64)
    for run in range(4):       # compiled lookups (if built) twice, then numpy's, cold and warm
        if run == 2:
            monkeypatch.setattr(ngram.fastloop, "library", lambda: None)
            mixture.ngram._lookup = None
        state, steps = mixture.begin_state(1), []
        for t in range(X.shape[1]):                                        # one step at a time
            logits, state = mixture(X[:, t:t + 1], state)
            steps.append(logits)
        assert torch.equal(torch.cat(steps), whole)
        assert torch.equal(generate_ids(mixture, ids[:5].tolist(), 80), greedy)
        assert torch.equal(generate_ids(mixture, ids[:5].tolist(), 80, num_samples=3,
                                        temperature=1.0, seed=1), sampled)
        assert beam_search(mixture, ids[:5].tolist(), 20, beam=4) == beams
    assert mixture._cache                                     # numpy's lookups were cached


@pytest.mark.skipif(fastloop.library() is None, reason=fastloop.status())
@pytest.mark.parametrize("order", [0, 1, 3, 6])
def test_a_compiled_mixing_step_is_the_numpy_step_bitwise(order):
    """`CountLookup.mix` (history shift, counts, λ bucket, the mix in one call) against the
    numpy lines of `MixtureStepper` it stands for: the same history and the same bits."""
    V, rng = 9, np.random.default_rng(4)
    train = _ids(3000, V)
    raw, cont = count_tables(train, V, order)
    kn = KneserNey(cont[:order] + [raw[order]])
    history = np.r_[_histories(_ids(50, V, seed=1), order),
                    rng.integers(0, V, (10, order))].astype(np.int64)
    history[-4:, :1] = -1                                      # before the text
    ids = rng.integers(0, V, len(history))
    p_net = rng.dirichlet(np.ones(V), len(history))
    weights = rng.uniform(0, 1, BUCKETS)
    shifted = np.concatenate([history[:, 1:], ids[:, None]], 1)
    p_kn, top = kn.rows_probs_numpy(shifted)
    lam = weights[np.minimum(np.log2(1 + top).astype(np.int64), BUCKETS - 1)][:, None]
    got = history.copy()
    mixed = kn.compiled_lookup().mix(got, ids, p_net, weights)
    assert np.array_equal(got, shifted) or order == 0        # a unigram model keeps none
    assert np.array_equal(mixed, lam * p_net + (1 - lam) * p_kn)
