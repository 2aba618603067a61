import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from rnnkit import fastloop
from rnnkit.generate import ScratchStepper, rnn_step_numpy

needs_compiler = pytest.mark.skipif(fastloop.library() is None, reason=fastloop.status())


def _numpy_trace(gx, W, h0):
    states, h, z = np.empty_like(gx), h0, np.empty(W.shape[1], np.float32)
    for t in range(len(gx)):
        h = rnn_step_numpy(h, np.asfortranarray(W), gx[t], z, out=states[t])
    return states


def _weights(H, V, scale, seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *shape: (rng.standard_normal(shape) * scale).astype(np.float32)  # noqa: E731
    return f(V, H), f(H, H) / H ** 0.5, f(H, V), f(V)     # rows, W_hh (gain `scale`), W_hq, b_q


@needs_compiler
@pytest.mark.parametrize("H", [512, 300, 64, 7])
def test_compiled_trace_follows_the_numpy_loop_and_threads_change_no_bit(H, monkeypatch):
    rows, W, _, _ = _weights(H, 28, 0.9)
    gx = rows[np.random.default_rng(1).integers(0, 28, 3000)]               # (T, H)
    h0 = np.random.default_rng(2).uniform(-1, 1, H).astype(np.float32)
    ref = _numpy_trace(gx, W, h0)
    packed = fastloop.pack_columns(W)
    runs = {}
    for threads in ("1", "2"):
        monkeypatch.setenv("RNNKIT_FASTLOOP_THREADS", threads)
        runs[threads] = fastloop.rnn_trace(gx, packed, h0)
    np.testing.assert_allclose(runs["1"], ref, atol=1e-5)
    assert np.array_equal(runs["1"], runs["2"])


@needs_compiler
def test_compiled_tanh_is_within_a_few_ulp_everywhere():
    x = np.concatenate([np.linspace(-20, 20, 200_001), [0.0, -0.0, 1e-30, -3.9e-4, 4.1e-4,
                                                       7.99, 8.01, 1e30, -1e30]]).astype(np.float32)
    got = fastloop.rnn_trace(x[:, None], fastloop.pack_columns(np.zeros((1, 1), np.float32)),
                             np.zeros(1, np.float32))[:, 0]
    exact = np.tanh(x.astype(np.float64))
    ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    assert np.abs(got - exact).max() < 4e-7               # measured: 2.7e-7 with FMA, 3.1e-7
    assert (np.abs(got - exact) / ulp).max() < 6          # 4.3 ulp with FMA, 5.3 without
    assert np.all(np.abs(got) <= 1)


@needs_compiler
@pytest.mark.parametrize("H,V", [(512, 28), (64, 28), (200, 130)])
def test_compiled_greedy_gives_the_numpy_loops_ids(H, V, monkeypatch):
    rows, W_hh, W_hq, b_q = _weights(H, V, 0.9, seed=H)
    step = ScratchStepper(*map(torch.from_numpy, (rows, W_hh, np.zeros(H, np.float32), W_hq,
                                                  b_q)), torch.zeros(1, H))
    prefix = [3, 1, 4, 1, 5, 9 % V, 2]
    want = step.greedy_numpy(prefix, 400)
    assert len(set(want)) > 3                                        # not a constant text
    for threads in ("1", "2"):
        monkeypatch.setenv("RNNKIT_FASTLOOP_THREADS", threads)
        assert step.greedy(prefix, 400) == want
    assert step.greedy(prefix[:1], 0) == [] and step.greedy(prefix, 1) == want[:1]
    monkeypatch.setattr(fastloop, "CHUNK", 7)                 # many calls, one text
    assert step.greedy(prefix, 400) == want and step.greedy(prefix, 14) == want[:14]
    with pytest.raises(ValueError):
        fastloop.rnn_greedy([V], 3, rows, *step.packed, b_q, np.zeros(H, np.float32))


def test_packing_puts_columns_in_panels_of_128_padded_to_16():
    W = np.arange(3 * 150, dtype=np.float32).reshape(3, 150)
    packed = fastloop.pack_columns(W)
    assert packed.shape == (3 * 128 + 3 * 32,)
    assert np.array_equal(packed[:3 * 128].reshape(3, 128), W[:, :128])
    tail = packed[3 * 128:].reshape(3, 32)
    assert np.array_equal(tail[:, :22], W[:, 128:]) and not tail[:, 22:].any()


@pytest.mark.parametrize("env,says", [({"CC": "/nonexistent/cc"}, "no C compiler found (set CC)"),
                                      ({"RNNKIT_FASTLOOP": "0"}, "RNNKIT_FASTLOOP=0"),
                                      ({"CC": "false"}, "could not build fastloop.c with ")])
def test_without_the_compiled_loop_generation_says_so_and_runs_the_numpy_loop(
        env, says, tmp_path):
    code = ("from rnnkit import fastloop, RNNScratch\n"
            "from rnnkit.generate import generate_ids\nimport torch\n"
            "m = RNNScratch(28, 32, generator=torch.Generator().manual_seed(0))\n"
            "print(fastloop.status()); print(generate_ids(m, [1, 2], 5).tolist())\n"
            "print(fastloop.library() is None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "RNNKIT_CACHE": str(tmp_path), **env}, check=True)
    status, ids, none = out.stdout.splitlines()
    assert status.startswith(f"numpy loop: {says}") and len(status.splitlines()) == 1
    assert none == "True" and len(eval(ids)[0]) == 5
    assert not list(tmp_path.glob("fastloop-*"))


@needs_compiler
def test_the_build_is_kept_in_the_cache_and_reused(tmp_path):
    code = "from rnnkit import fastloop; print(fastloop.status())"
    env = {**os.environ, "RNNKIT_CACHE": str(tmp_path)}
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, check=True)
        assert out.stdout.startswith("compiled loop")
    built = list(tmp_path.glob("fastloop-*.so"))
    assert len(built) == 1 and not list(tmp_path.glob("tmp*"))


@pytest.mark.parametrize("text", ['a (b) c)) ((d"e" “f” g\n hi\n\nx) y (', ")))(((", "", "\n",
                                  "he said (“yes (no)”)\nand (left"])
def test_text_features_are_the_per_character_loops(text):
    from rnnkit.data import time_machine_text
    from rnnkit.lab import text_features, text_features_loop
    for tokens in (list(text), list(time_machine_text()[:3000]),
                   ["<unk>", "io", "(", "É", "a", "\n", "“", ")", ")"]):
        assert np.array_equal(text_features(tokens), text_features_loop(tokens))


def test_feature_ranking_is_pearsons_r():
    from rnnkit.lab import FEATURES, correlations
    rng = np.random.default_rng(0)
    acts = rng.standard_normal((500, 12)).astype(np.float32)
    feats = rng.standard_normal((500, len(FEATURES))).astype(np.float32)
    feats[:, 0] = 0.0                                              # a feature the text lacks
    ranked = correlations(acts, feats, top=3)
    assert ranked[FEATURES[0]] == []
    for j, name in enumerate(FEATURES[1:], 1):
        r = [np.corrcoef(acts[:, u], feats[:, j])[0, 1] for u in range(12)]
        best = sorted(range(12), key=lambda u: -abs(r[u]))[:3]
        assert [u for u, _ in ranked[name]] == best
        assert [v for _, v in ranked[name]] == pytest.approx([r[u] for u in best], abs=1e-4)


@needs_compiler
def test_lab_trace_of_an_rnn_is_the_numpy_loops(monkeypatch):
    from rnnkit import RNNScratch
    model = RNNScratch(28, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        model.W_hh.mul_(9)                                         # gain ~0.9: a real recurrence
    ids = np.random.default_rng(4).integers(0, 28, 700).tolist()
    fast = model.trace(ids)
    monkeypatch.setattr(fastloop, "library", lambda: None)        # the numpy loop
    slow = model.trace(ids)
    np.testing.assert_allclose(fast["layers"][0]["h"], slow["layers"][0]["h"], atol=1e-5)
    np.testing.assert_allclose(fast["logits"], slow["logits"], atol=1e-4)


@needs_compiler
@pytest.mark.parametrize("cell,H,layers,embed", [("lstm", 50, 2, 12), ("gru", 37, 2, 0),
                                                 ("lstm", 128, 1, 0), ("rnn", 40, 2, 8)])
def test_lab_traces_of_gated_and_stacked_layers_are_the_numpy_loops(cell, H, layers, embed,
                                                                    monkeypatch):
    from rnnkit.models import TorchRNN
    torch.manual_seed(0)
    model = TorchRNN(30, H, cell=cell, num_layers=layers, embed=embed).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)                                  # gates away from 0.5: a real recurrence
    ids = np.random.default_rng(5).integers(0, 30, 600).tolist()
    fast = model.trace(ids)
    monkeypatch.setattr(fastloop, "library", lambda: None)        # the numpy loops
    slow = model.trace(ids)
    for got, want in zip(fast["layers"], slow["layers"]):
        assert got.keys() == want.keys()
        for name in want:
            np.testing.assert_allclose(got[name], want[name], atol=1e-5, err_msg=name)
    np.testing.assert_allclose(fast["logits"], slow["logits"], atol=1e-4)
    with torch.no_grad():                        # and both are what torch's layer computes
        logits, _ = model(torch.tensor([ids]), model.begin_state(1))
    np.testing.assert_allclose(fast["logits"], logits[:, 0].numpy(), atol=1e-4)


@needs_compiler
def test_a_compiler_without_march_native_gets_the_portable_build(tmp_path):
    cc = tmp_path / "cc"                  # a compiler that knows no -march=native
    cc.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = -march=native ] && exit 1; done\n'
                  'exec cc "$@"\n')
    cc.chmod(0o755)
    code = ("from rnnkit import fastloop, RNNScratch\nfrom rnnkit.generate import generate_ids\n"
            "import torch\nm = RNNScratch(28, 40, generator=torch.Generator().manual_seed(0))\n"
            "print(fastloop.status()); print(generate_ids(m, [1, 2], 30).tolist())")
    env = {**os.environ, "RNNKIT_CACHE": str(tmp_path / "cache"), "CC": str(cc)}
    status, ids = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 env=env, check=True).stdout.splitlines()
    assert status.startswith("compiled loop (fastloop.c, -O3, ")
    env["RNNKIT_FASTLOOP"] = "0"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          check=True).stdout.splitlines()[1] == ids      # the numpy loop's ids


def test_threads_asking_at_once_all_get_the_one_library(tmp_path):
    code = ("import threading\nfrom rnnkit import fastloop\ngot = []\n"
            "ts = [threading.Thread(target=lambda: got.append(fastloop.library())) "
            "for _ in range(8)]\n[t.start() for t in ts]; [t.join() for t in ts]\n"
            "print(len(got), len({id(x) for x in got}), fastloop.status()[:13])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "RNNKIT_CACHE": str(tmp_path)}).stdout.split()
    want = "compiled" if fastloop.library() is not None else "numpy"
    assert out[:2] == ["8", "1"] and out[2] == want
    assert len(list(tmp_path.glob("fastloop-*.so"))) == (want == "compiled")


def test_the_processes_of_a_run_share_the_cores_between_their_teams(monkeypatch):
    monkeypatch.delenv("RNNKIT_FASTLOOP_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)))
    assert fastloop.threads() == 2                                  # never more than two
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert fastloop.threads() == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")                     # --nproc 4 on 4 cores
    assert fastloop.threads() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert fastloop.threads() == 1
    monkeypatch.setenv("RNNKIT_FASTLOOP_THREADS", "2")              # said outright
    assert fastloop.threads() == 2
