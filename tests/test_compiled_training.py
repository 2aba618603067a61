"""`--impl compiled`: the chapter's RNN trained with every product in fasttrain.c, held to the
hand-derived BPTT (`bptt.RNNRecurrence`) and the book's autograd loop."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from rnnkit import fastloop, perf
from rnnkit.cli import main

from test_bptt import _grads

needs_compiler = pytest.mark.skipif(fastloop.library() is None, reason=fastloop.status())


def _run(impl, X, Y, h0, H, precision="fp32"):
    """test_bptt's outputs and gradients of one step, with a contracting W_hh (as trained)."""
    return _grads(impl, X, Y, h0, precision=precision, H=H, w_scale=5)


@needs_compiler
@pytest.mark.parametrize("B,T,H", [(8, 20, 96), (5, 7, 40), (13, 1, 100), (32, 35, 512)])
def test_compiled_gradients_equal_the_hand_derived_and_the_books(B, T, H):
    """Row blocks of 8 and panels of 32 with their tails (B 5, 13; H 40, 100), one step."""
    torch.manual_seed(0)
    X, Y = torch.randint(0, 28, (B, T)), torch.randint(0, 28, (B, T))
    h0 = torch.randn(B, H) * 0.5
    out_book, book = _run("autograd", X, Y, h0, H)
    out_bptt, bptt = _run("bptt", X, Y, h0, H)
    out, ours = _run("compiled", X, Y, h0, H)
    assert torch.allclose(out, out_bptt, atol=1e-5) and torch.allclose(out, out_book, atol=1e-5)
    for name in book:
        for ref in (book, bptt):
            err = (ours[name] - ref[name]).norm() / ref[name].norm()
            assert err < 2e-5, (name, err.item())


@needs_compiler
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_one_thread_and_two_give_the_same_bits(precision, monkeypatch):
    if precision == "bf16" and not fastloop.has_bf16():
        pytest.skip("no AVX512-BF16 in this build")
    torch.manual_seed(1)
    X, Y, h0 = torch.randint(0, 28, (11, 9)), torch.randint(0, 28, (11, 9)), torch.randn(11, 72)
    results = []
    for threads in ("1", "2"):
        monkeypatch.setenv("RNNKIT_FASTLOOP_THREADS", threads)
        out, grads = _run("compiled", X, Y, h0, 72, precision=precision)
        results.append([out, *grads.values()])
    assert all(torch.equal(x, y) for x, y in zip(*results))


@pytest.mark.skipif(not fastloop.has_bf16(), reason="no AVX512-BF16 in this build")
@pytest.mark.parametrize("B,T,H", [(8, 20, 96), (5, 7, 41), (32, 35, 512)])
def test_compiled_bf16_stays_as_close_to_fp32_as_bptts_bf16(B, T, H):
    """bf16 products, fp32 states and sums: within bptt bf16's distance of the fp32 loop (odd
    H: the last pair of a row is half padding)."""
    torch.manual_seed(0)
    X, Y = torch.randint(0, 28, (B, T)), torch.randint(0, 28, (B, T))
    h0 = torch.randn(B, H) * 0.5
    out_ref, ref = _run("autograd", X, Y, h0, H)
    out_bptt, bptt = _run("bptt", X, Y, h0, H, precision="bf16")
    out, ours = _run("compiled", X, Y, h0, H, precision="bf16")
    assert (out - out_ref).abs().max() <= 2 * (out_bptt - out_ref).abs().max() + 1e-6
    for name in ref:
        err = (ours[name] - ref[name]).norm() / ref[name].norm()
        assert err < 0.05 and err < 2 * (bptt[name] - ref[name]).norm() / ref[name].norm(), name


@pytest.mark.skipif(not fastloop.has_bf16(), reason="no AVX512-BF16 in this build")
@pytest.mark.parametrize("K,N", [(5, 40), (512, 512), (33, 64)])
def test_packing_in_c_is_packing_in_torch(K, N):
    W = torch.randn(N, K).t() if K == 33 else torch.randn(K, N)     # a transposed view too
    assert torch.equal(fastloop.pack_pairs(W), fastloop.pack_pairs_torch(W))
    assert torch.equal(fastloop.pack_panels(W), fastloop.pack_panels_torch(W))


def test_pairs_are_bf16_rounded_rows_two_by_two():
    W = torch.randn(5, 40)
    pairs = fastloop.pack_pairs_torch(W)                            # (2 panels, 3 pairs, 32)
    halves = pairs.view(torch.int16).reshape(2, 3, 32, 2)           # [panel, pair, col, k%2]
    rounded = torch.zeros(6, 64, dtype=torch.bfloat16)
    rounded[:5, :40] = W                                            # to nearest even
    back = halves.permute(1, 3, 0, 2).reshape(6, 64).view(torch.bfloat16)
    assert pairs.shape == (2, 3, 32) and torch.equal(back, rounded)


def test_without_avx512_bf16_a_compiled_bf16_model_is_bptts(monkeypatch):
    torch.manual_seed(0)
    X, Y, h0 = torch.randint(0, 28, (4, 6)), torch.randint(0, 28, (4, 6)), torch.randn(4, 40)
    monkeypatch.setattr(fastloop, "has_bf16", lambda: False)
    out, grads = _run("compiled", X, Y, h0, 40, precision="bf16")
    out_bptt, bptt = _run("bptt", X, Y, h0, 40, precision="bf16")
    assert torch.equal(out, out_bptt) and all(torch.equal(grads[k], bptt[k]) for k in grads)


@needs_compiler
@pytest.mark.parametrize("precision,rel,says", [("fp32", 1e-4, "compiled), 64 hidden"),
                                                ("bf16", 2e-2, "compiled, bf16 products)")])
def test_a_compiled_run_trains_like_the_bptt_run_and_says_which_it_is(precision, rel, says,
                                                                      tmp_path, capsys):
    if precision == "bf16" and not fastloop.has_bf16():
        pytest.skip("no AVX512-BF16 in this build")
    args = ["--epochs", "3", "--max-tokens", "3000", "--hidden", "64", "--batch-size", "8",
            "--precision", precision]
    main(["train", *args, "--out", str(tmp_path / "bptt")])
    main(["train", *args, "--impl", "compiled", "--out", str(tmp_path / "compiled")])
    out = capsys.readouterr().out
    assert f"RNN (from scratch, hand-derived BPTT, its GEMMs {says}" in out
    ppl = {}
    for name in ("bptt", "compiled"):
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        ppl[name] = [json.loads(line)["train_ppl"] for line in lines]
    assert ppl["compiled"] == pytest.approx(ppl["bptt"], rel=rel)
    assert ppl["compiled"][-1] < ppl["compiled"][0]
    assert torch.get_num_threads() == perf.training_threads("bptt")      # given back


def test_without_a_compiler_a_compiled_run_is_the_bptt_run_and_says_so(tmp_path):
    code = ("from rnnkit.cli import main\nimport sys\n"
            "main(['train', '--epochs', '2', '--max-tokens', '2000', '--hidden', '32', "
            "'--batch-size', '4', '--impl', sys.argv[1], '--out', sys.argv[2]])")
    weights = []
    for impl in ("bptt", "compiled"):
        out = subprocess.run([sys.executable, "-c", code, impl, str(tmp_path / impl)],
                             capture_output=True, text=True, check=True,
                             env={**os.environ, "RNNKIT_FASTLOOP": "0",
                                  "RNNKIT_CACHE": str(tmp_path / "cache")})
        weights.append(load_file(tmp_path / impl / "model.safetensors"))
    assert "its GEMMs in torch (numpy loop: RNNKIT_FASTLOOP=0)" in out.stdout
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # bptt's bits


@pytest.mark.parametrize("flags", [["--cell", "gru"], ["--cell", "lstm", "--precision", "bf16"]])
def test_compiled_is_for_the_rnn_and_says_so(flags, tmp_path, capsys):
    assert main(["train", "--impl", "compiled", *flags, "--epochs", "1",
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "--impl compiled is for --cell rnn in fp32 or bf16 on the CPU" in err


def test_training_keeps_torch_on_one_thread_where_fastloop_runs_the_products():
    compiled = fastloop.library() is not None
    for impl, cell in (("compiled", "rnn"), ("torch", "mingru"), ("torch", "minlstm")):
        assert perf.training_threads(impl, cell) == (1 if compiled or impl == "compiled"
                                                     else torch.get_num_threads())
    for impl, cell in (("bptt", "rnn"), ("torch", "lstm"), ("torch", "transformer")):
        assert perf.training_threads(impl, cell) == torch.get_num_threads()
