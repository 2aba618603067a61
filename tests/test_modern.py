"""The recurrences of today and the yardstick: minGRU/minLSTM's three ways to the same states
(scan, in-place recurrence, step by step), the transformer's cache against recomputing, both
causal, both through eval, generation, the lab, ONNX and an exact resume."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rnnkit import Run, TrainConfig, fastloop
from rnnkit.cli import main
from rnnkit.generate import beam_search, generate_ids
from rnnkit.minrnn import CompiledLinear, MinCell, MinRNN, linear_recurrence
from rnnkit.train import evaluate
from rnnkit.transformer import Transformer, sliding_logits, windowed_logits

from test_runs import assert_stopped_run_resumes_bitwise

KINDS = ("mingru", "minlstm")


def _min_model(kind, **kw):
    torch.manual_seed(0)
    return MinRNN(23, 24, cell=kind, num_layers=2, embed=16, **kw)


def _transformer(context=8, dropout=0.0):
    torch.manual_seed(0)
    return Transformer(23, 32, context=context, num_layers=2, dropout=dropout)


@pytest.mark.parametrize("kind", KINDS)
def test_scan_recurrence_and_steps_give_the_same_states(kind):
    torch.manual_seed(1)
    cell = MinCell(kind, 16, 24)
    x, h0 = torch.randn(3, 128, 16) * 3, torch.rand(3, 24)
    reference = cell.sequential(x, h0)                                   # (B, T, H)
    assert torch.allclose(cell.scan(x, h0), reference, atol=1e-5, rtol=1e-5)
    assert torch.allclose(linear_recurrence(*cell.coefficients(x), h0), reference, atol=1e-5,
                          rtol=1e-5)


@pytest.mark.skipif(fastloop.library() is None, reason=fastloop.status())
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("B,T,H", [(3, 128, 24), (2, 1, 40), (5, 33, 16)])
def test_compiled_window_equals_the_steps_with_their_gradients(kind, B, T, H, monkeypatch):
    """fasttrain.c's fused recurrence and linear layers (what CPU training runs) against
    `sequential` through autograd: states, and the gradients of x, h0 and the gate weights
    (H not a multiple of 16: vector tails; one step). One and two threads: the same bits."""
    torch.manual_seed(2)
    cell = MinCell(kind, 16, H)
    x = (torch.randn(B, T, 16) * 3).requires_grad_()
    h0 = torch.rand(B, H).requires_grad_()
    dh = torch.randn(B, T, H)
    wrt = [x, h0, *cell.to_gates.parameters()]
    reference = cell.sequential(x, h0)
    expected = torch.autograd.grad(reference, wrt, dh)
    runs = []
    for threads in ("1", "2"):
        monkeypatch.setenv("RNNKIT_FASTLOOP_THREADS", threads)
        states = cell.train_states(x, h0)
        runs.append([states, *torch.autograd.grad(states, wrt, dh)])
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    assert torch.allclose(runs[0][0], reference, atol=1e-5, rtol=1e-5)
    for got, want in zip(runs[0][1:], expected):
        assert (got - want).norm() / want.norm() < 1e-5


@pytest.mark.skipif(fastloop.library() is None, reason=fastloop.status())
@pytest.mark.parametrize("bias", [True, False])
def test_compiled_linear_is_nn_linear(bias):
    torch.manual_seed(3)
    layer = nn.Linear(40, 72, bias=bias)
    x = torch.randn(3, 37, 40, requires_grad=True)
    dy = torch.randn(3, 37, 72)
    got = CompiledLinear.apply(x, layer.weight, layer.bias)
    assert torch.allclose(got, layer(x), atol=1e-5)
    wrt = [x, *layer.parameters()]
    for a, b in zip(torch.autograd.grad(got, wrt, dy), torch.autograd.grad(layer(x), wrt, dy)):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("token_shift", [False, True])
def test_training_windows_equal_the_steps_across_window_boundaries(kind, token_shift):
    """Three windows trained in parallel with the state carried give the logits and state of
    reading the whole text one token at a time (the token shift's u carried as well)."""
    model = _min_model(kind, token_shift=token_shift)
    X = torch.randint(0, 23, (4, 60))
    model.train()
    state, parallel = model.begin_state(4), []
    for window in X.split(20, dim=1):
        logits, state = model(window, state)
        parallel.append(logits)
    model.eval()
    steps, one = [], model.begin_state(4)
    for t in range(X.shape[1]):
        logits, one = model(X[:, t:t + 1], one)
        steps.append(logits)
    assert torch.allclose(torch.cat(parallel), torch.cat(steps), atol=1e-5)
    assert len(state) == len(one) == (2 if token_shift else 1)
    for a, b in zip(state, one):
        assert torch.allclose(a, b, atol=1e-5)


def test_the_token_shift_is_refused_in_one_line_for_cells_without_it(capsys):
    assert main(["train", "--cell", "lstm", "--token-shift", "--epochs", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "rnnkit: error: --token-shift is for --cell mingru or minlstm, not lstm"


def test_the_token_shift_mixes_the_step_before_into_the_cells_input():
    """u_t + μ (u_{t−1} − u_t), written out for one block: the first step reads the carried u."""
    block = _min_model("mingru", token_shift=True).blocks[0]
    x, previous = torch.randn(2, 5, 16), torch.randn(2, 16)
    got, last = block.cell_input(x, previous)
    u = block.norm1(x)
    mu = block.mu
    assert torch.allclose(got[:, 0], (1 - mu) * u[:, 0] + mu * previous, atol=1e-6)
    assert torch.allclose(got[:, 3], (1 - mu) * u[:, 3] + mu * u[:, 2], atol=1e-6)
    assert torch.equal(last, u[:, -1])
    assert _min_model("mingru").blocks[0].cell_input(x, None)[1] is None


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("token_shift", [False, True])
def test_parallel_gradients_equal_the_autograd_step_by_step_reference(kind, token_shift):
    model = _min_model(kind, token_shift=token_shift)
    X, Y = torch.randint(0, 23, (4, 30)), torch.randint(0, 23, (4, 30))
    state = (torch.rand(2, 4, 24),) + ((torch.randn(2, 4, 16),) if token_shift else ())

    def grads(training_path):
        model.zero_grad()
        model.train(training_path)                  # train: scan/recurrence; eval: steps
        logits, _ = model(X, state)
        F.cross_entropy(logits.reshape(-1, 23), Y.T.reshape(-1)).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}
    fast, reference = grads(True), grads(False)
    for name in reference:
        assert torch.allclose(fast[name], reference[name], atol=1e-5), name


@pytest.mark.parametrize("make", [lambda: _min_model("mingru"), lambda: _min_model("minlstm"),
                                  lambda: _min_model("mingru", token_shift=True), _transformer])
@pytest.mark.parametrize("training", [True, False])
def test_outputs_before_t_do_not_see_inputs_from_t_on(make, training):
    model = make().train(training)
    X = torch.randint(0, 23, (2, 8))
    changed = X.clone()
    changed[:, 5:] = (changed[:, 5:] + 7) % 23
    a, _ = model(X, model.begin_state(2))
    b, _ = model(changed, model.begin_state(2))
    assert torch.equal(a[:5], b[:5])
    assert not torch.allclose(a[5:], b[5:])


def test_cached_generation_equals_recomputing_each_window():
    """30 steps with a context of 8: the window is cut to its last half three times."""
    model = _transformer().eval()
    ids = torch.randint(0, 23, (30,)).tolist()
    step = model.stepper(1)
    cached = torch.stack([step(torch.tensor([i]))[0] for i in ids])
    assert torch.allclose(cached, windowed_logits(model, ids), atol=1e-5)


def test_cache_rows_at_different_lengths_and_reordered_stay_independent():
    """The lab starts streams at different times; beam search reorders them."""
    model = _transformer().eval()
    a, b = torch.randint(0, 23, (20,)).tolist(), torch.randint(0, 23, (13,)).tolist()
    step = model.stepper(2)
    for i in range(7):                                   # row 1 reads 7 tokens it then forgets
        step(torch.tensor([a[i], 5]))
    step.reset([1])
    out = [step(torch.tensor([a[i], b[i - 7]])) for i in range(7, 20)]
    assert torch.allclose(torch.stack([o[1] for o in out]), windowed_logits(model, b), atol=1e-5)
    assert torch.allclose(torch.stack([o[0] for o in out]), windowed_logits(model, a)[7:],
                          atol=1e-5)
    step.reorder(torch.tensor([1, 1]))                   # both rows now continue row 1
    nxt = step(torch.tensor([3, 3]))
    assert torch.allclose(nxt[0], nxt[1]) and torch.allclose(
        nxt[0], windowed_logits(model, b + [3])[-1], atol=1e-5)


def test_sliding_evaluation_scores_every_token_once_with_half_a_context():
    model = _transformer(context=16).eval()
    ids = np.random.default_rng(0).integers(0, 23, 301)
    loss, tokens = evaluate(model, ids, batch_size=1, num_steps=16)
    logits = sliding_logits(model, torch.as_tensor(ids[:-1]))[:tokens]   # (T, V)
    expected = F.cross_entropy(logits.double(), torch.as_tensor(ids[1:tokens + 1]),
                               reduction="sum")
    assert tokens == 296 and model.scoring_steps(16) == 8
    assert math.isclose(loss, float(expected), rel_tol=1e-6)


@pytest.mark.parametrize("cell", ["minlstm", "transformer"])
def test_a_stopped_run_resumes_bitwise(cell, tmp_path, monkeypatch):
    config = TrainConfig(cell=cell, impl="torch", hidden=32, layers=2, dropout=0.2, epochs=3,
                         max_tokens=3000, batch_size=8, num_steps=16, sample_every=0,
                         val_fraction=0.05, optimizer="adamw", lr=3e-3,
                         token_shift=cell == "minlstm")
    assert_stopped_run_resumes_bitwise(config, tmp_path, monkeypatch, at=(1, 5))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny run of each kind, with an n-gram model mixed in."""
    root = tmp_path_factory.mktemp("modern")
    out = {}
    for cell in ("mingru", "transformer"):
        out[cell] = root / cell
        assert main(["train", "--cell", cell, "--hidden", "32", "--layers", "2",
                     "--num-steps", "16", "--max-tokens", "4000", "--batch-size", "8",
                     "--epochs", "2", "--optimizer", "adamw", "--lr", "3e-3", "--ngram", "3",
                     "--sample-every", "0", "--out", str(out[cell]),
                     *(["--token-shift"] if cell == "mingru" else [])]) == 0
    return out


@pytest.mark.parametrize("cell", ["mingru", "transformer"])
def test_each_kind_generates_samples_beams_and_evaluates(runs, cell, capsys):
    run = Run.open(runs[cell])
    assert run.config.impl == "torch" and run.model.mixture
    prefix = run.vocab[list("time ")]
    greedy = generate_ids(run.model, prefix, 40)[0].tolist()
    # the mixture's stepper (the network's own step: a cache for the transformer) equals
    # reading the whole text with the model's forward
    text = prefix + greedy[:-1]
    net = run.model.network
    if cell == "transformer":
        logits = windowed_logits(net, text)[:, None]                     # (T, 1, V)
    else:
        logits, _ = net(torch.tensor([text]), net.begin_state(1))        # (T, 1, V)
    history = torch.zeros(1, run.model.ngram.order, dtype=torch.long)
    mixed, _ = run.model.mix(logits, torch.tensor([text]), history)
    assert mixed[len(prefix) - 1:, 0].argmax(-1).tolist() == greedy
    best = beam_search(run.model, prefix, 20, beam=4)[0]
    assert best[1] >= beam_search(run.model, prefix, 20, beam=1)[0][1] - 1e-9
    assert main(["generate", str(runs[cell]), "--prefix", "time ", "--num-chars", "30",
                 "--num-samples", "3", "--temperature", "0.8", "--seed", "1"]) == 0
    assert main(["eval", str(runs[cell]), "--json", "--no-ngram"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["sliding_windows"] == ({"window": 8, "context": 16, "min_context": 8}
                                         if cell == "transformer" else None)
    assert 1 < report["perplexity"] < 28


def test_the_lab_reads_both_kinds_and_says_units_are_for_recurrent_cells(runs):
    import httpx
    from test_lab import start_lab
    proc, server = start_lab(runs["mingru"], runs["transformer"])
    try:
        text = "the time machine " * 20
        for name in ("mingru", "transformer"):
            r = httpx.post(f"{server}/api/runs/{name}/score", json={"text": text})
            assert r.status_code == 200 and 0 < r.json()["bits_per_char"] < 6
            body = httpx.post(f"{server}/api/runs/{name}/generate",
                              json={"prefix": "the ", "num_chars": 20}).json()
            assert len(body["samples"][0]["text"]) == 24
        r = httpx.post(f"{server}/api/runs/mingru/units",
                       json={"text": text, "layer": 1, "state": "z"})
        assert r.status_code == 200 and r.json()["shape"] == [len(r.json()["tokens"]), 32]
        r = httpx.post(f"{server}/api/runs/transformer/units",
                       json={"text": text, "layer": 0, "state": "h"})
        assert r.status_code == 422 and "recurrent cells" in r.json()["error"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_mingru_exports_its_step_and_the_transformer_refuses_in_one_line(runs, tmp_path,
                                                                           capsys):
    import onnxruntime as ort
    out = tmp_path / "m.onnx"
    assert main(["export", str(runs["mingru"]), "--out", str(out)]) == 0
    session = ort.InferenceSession(str(out))
    run = Run.open(runs["mingru"], ngram=False)
    ids = torch.tensor(run.vocab[list("the time")])
    assert run.config.token_shift                           # the state: h and the shift's u
    state, h, u = run.model.begin_state(1), *np.zeros((2, 2, 1, 32), np.float32)
    for i in ids:
        logits, state = run.model(i.reshape(1, 1), state)
        onnx_logits, h, u = session.run(None, {"ids": i.reshape(1).numpy(), "h": h, "u": u})
    assert np.allclose(onnx_logits, logits[0].detach().numpy(), atol=1e-5)
    assert np.allclose(u, state[1].detach().numpy(), atol=1e-5)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["inputs"]["u"] == [2, "N", 32] and meta["outputs"][-1] == "u_next"
    capsys.readouterr()
    assert main(["export", str(runs["transformer"]), "--out", str(tmp_path / "t.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rnnkit: error: a transformer run is not exported") and "\n" not in err


@pytest.mark.parametrize("kind,token_shift", [("mingru", False), ("minlstm", False),
                                              ("minlstm", True)])
def test_the_labs_trace_reads_a_text_as_the_step_by_step_forward(kind, token_shift):
    model = _min_model(kind, token_shift=token_shift).eval()
    ids = torch.randint(0, 23, (300,), generator=torch.Generator().manual_seed(2)).tolist()
    traced = model.trace(ids)                               # every step at once
    state, logits, hs = model.begin_state(1), [], []
    with torch.no_grad():
        for i in ids:                                       # one character at a time
            out, state = model(torch.tensor([[i]]), state)
            logits.append(out[0, 0])
            hs.append(state[0][:, 0])
    torch.testing.assert_close(torch.from_numpy(traced["logits"]), torch.stack(logits),
                               atol=1e-5, rtol=1e-5)
    for layer, record in enumerate(traced["layers"]):
        torch.testing.assert_close(torch.from_numpy(record["h"]),
                                   torch.stack([h[layer] for h in hs]), atol=1e-5, rtol=1e-5)
