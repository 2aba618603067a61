"""Decoding and deployment: beam search against brute force and greedy, the ONNX export
against rnnkit itself in onnxruntime, and runs that load anywhere."""
import itertools
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnkit import checkpoint as ckpt
from rnnkit.cli import main
from rnnkit.config import TrainConfig
from rnnkit.generate import beam_search, generate_ids
from rnnkit.models import RNNScratch, build_model

TINY = ["--hidden", "24", "--epochs", "3", "--max-tokens", "3000", "--batch-size", "8",
        "--sample-every", "0"]


def _tiny_model(seed: int, vocab: int = 5, hidden: int = 6) -> RNNScratch:
    """Random weights large enough that next-token distributions are far from uniform."""
    model = RNNScratch(vocab, hidden, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 1.5, generator=torch.Generator().manual_seed(seed + 1))
    return model.eval()


@torch.no_grad()
def _log_prob(model, prefix: list[int], continuation: list[int]) -> float:
    """log P(continuation | prefix) by running the model over the whole sequence."""
    ids = torch.tensor([prefix + continuation])
    logits, _ = model(ids, model.begin_state(1))                        # (T, 1, V)
    logp = torch.log_softmax(logits[:, 0].double(), dim=1)
    n = len(prefix)
    return float(sum(logp[n - 1 + i, t] for i, t in enumerate(continuation)))


def test_a_beam_wider_than_every_sequence_finds_the_most_probable_one():
    for seed in range(3):
        model = _tiny_model(seed)
        for steps in (1, 2, 3, 4):
            best = max(itertools.product(range(5), repeat=steps),
                       key=lambda seq: _log_prob(model, [1, 2], list(seq)))
            (found, logp), = beam_search(model, [1, 2], steps, beam=5 ** steps)
            assert found == list(best)
            assert logp == pytest.approx(_log_prob(model, [1, 2], found), abs=1e-5)


def test_beam_one_is_greedy():
    for seed in range(3):
        model = _tiny_model(seed, vocab=12, hidden=16)
        greedy = generate_ids(model, [3, 1, 4], 30)[0].tolist()
        assert beam_search(model, [3, 1, 4], 30, beam=1)[0][0] == greedy


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.lists(st.integers(0, 7), min_size=1, max_size=6),
       st.integers(2, 6), st.integers(1, 12))
def test_the_beams_result_is_never_less_probable_than_greedy(seed, prefix, beam, steps):
    model = _tiny_model(seed, vocab=8, hidden=10)
    greedy = generate_ids(model, prefix, steps)[0].tolist()
    results = beam_search(model, prefix, steps, beam=beam, num_results=2)
    # both scored by the same forward pass (the beam's own fp32 steps differ in the 6th digit)
    assert _log_prob(model, prefix, results[0][0]) >= _log_prob(model, prefix, greedy) - 1e-4
    assert [r[1] for r in results] == sorted((r[1] for r in results), reverse=True)


def test_stop_character_and_length_penalty():
    model = _tiny_model(4, vocab=6, hidden=8)
    results = beam_search(model, [1], 12, beam=6, num_results=6, stop_id=2)
    assert all(seq[-1] == 2 or len(seq) == 12 for seq, _ in results)
    assert all(2 not in seq[:-1] for seq, _ in results)
    long = beam_search(model, [1], 12, beam=6, num_results=6, stop_id=2, length_penalty=2.0)
    score = [lp / len(s) ** 2.0 for s, lp in long]
    assert score == sorted(score, reverse=True)


def test_generate_beam_on_the_command_line(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["generate", str(out), "--beam", "4", "--num-samples", "3",
                 "--num-chars", "20"]) == 0
    lines = capsys.readouterr().out.splitlines()
    logps = [float(line.split("\t")[0]) for line in lines]
    assert len(lines) == 3 and logps == sorted(logps, reverse=True) and logps[0] < 0
    assert main(["generate", str(out), "--beam", "4", "--stop-at", " ", "--length-penalty",
                 "0.75", "--num-chars", "40"]) == 0
    assert capsys.readouterr().out.startswith("time traveller")
    for bad, message in ((["--beam", "2", "--num-samples", "3"], "more than --beam"),
                         (["--beam", "2", "--temperature", "0.5"], "takes no --temperature"),
                         (["--stop-at", "x"], "go with --beam"),
                         (["--beam", "2", "--stop-at", "xy"], "one token")):
        assert main(["generate", str(out), *bad]) == 2
        assert message in capsys.readouterr().err


KINDS = {
    "scratch rnn (bptt)": [],
    "scratch rnn (bf16 bptt)": ["--precision", "bf16"],
    "scratch gru": ["--cell", "gru"],
    "scratch lstm": ["--cell", "lstm", "--impl", "autograd"],
    "torch rnn": ["--impl", "torch"],
    "torch gru, embedding": ["--impl", "torch", "--cell", "gru", "--embed", "8"],
    "torch lstm, 2 layers, embedding": ["--cell", "lstm", "--layers", "2", "--embed", "8"],
    "torch lstm, tied": ["--cell", "lstm", "--embed", "24", "--tie"],
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_onnx_export_decodes_exactly_like_rnnkit(kind, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, *KINDS[kind], "--out", str(run)]) == 0
    onnx_path = tmp_path / "model.onnx"
    assert main(["export", str(run), "--format", "onnx", "--out", str(onnx_path)]) == 0
    meta = json.loads(onnx_path.with_suffix(".json").read_text())
    session = ort.InferenceSession(str(onnx_path))
    model, vocab, config = ckpt.load_run(run)
    if hasattr(model, "precision"):
        model.precision = "fp32"     # the graph is fp32, as generation is (bf16 trains only)
    # logits of one step from random states, N = 3 (a dynamic batch)
    ids = torch.tensor([1, 5, 9])
    state = tuple(torch.randn_like(s) for s in model.begin_state(3))
    with torch.no_grad():
        expected = model(ids[:, None], state)[0][0].numpy()
    feeds = {"ids": ids.numpy(), **{n: s.numpy() for n, s in zip(meta["outputs"][1:], state)}}
    feeds = {k.removesuffix("_next"): v for k, v in feeds.items()}
    assert np.abs(session.run(["logits"], feeds)[0] - expected).max() < 1e-5
    # 200 greedy steps through onnxruntime give `rnnkit generate`'s text
    capsys.readouterr()
    assert main(["generate", str(run), "--num-chars", "200"]) == 0
    reference = capsys.readouterr().out.rstrip("\n")
    assert _onnx_greedy(onnx_path, 200) == reference


def _onnx_greedy(onnx_path, num_chars: int) -> str:
    """The README's loop: numpy + onnxruntime and the exported JSON, nothing else."""
    meta = json.loads(onnx_path.with_suffix(".json").read_text())
    session = ort.InferenceSession(str(onnx_path))
    itos = meta["vocab"]["idx_to_token"]
    stoi = {t: i for i, t in enumerate(itos)}
    state = {name: np.zeros([1 if d == "N" else d for d in shape], np.float32)
             for name, shape in meta["inputs"].items() if name != "ids"}
    prefix = [stoi.get(c, 0) for c in meta["prefix"]]
    out, token = [], prefix[0]
    for i in range(len(prefix) - 1 + num_chars):
        logits, *new = session.run(None, {"ids": np.array([token]), **state})
        state = dict(zip(state, new))
        token = prefix[i + 1] if i + 1 < len(prefix) else int(logits[0].argmax())
        if i + 1 >= len(prefix):
            out.append(itos[token])
    return meta["prefix"] + meta["separator"].join(out)


def test_export_refuses_what_it_cannot_do_and_writes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(run)]) == 0
    target = tmp_path / "m.onnx"
    target.write_bytes(b"keep me")
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(target)]) == 2
    assert "--force" in capsys.readouterr().err and target.read_bytes() == b"keep me"
    assert main(["export", str(run), "--format", "tflite", "--out", str(tmp_path / "x")]) == 2
    assert "--format must be one of onnx" in capsys.readouterr().err
    (run / "config.json").write_text("{")
    assert main(["export", str(run), "--out", str(tmp_path / "y.onnx")]) == 1
    assert "corrupted" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "run"]


def test_a_bf16_run_loads_anywhere_and_generates_the_same_greedy_text(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--precision", "bf16", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["generate", str(run), "--num-chars", "60"]) == 0
    printed = capsys.readouterr().out.rstrip("\n")
    from rnnkit import load_run
    model, vocab, config = load_run(run, device="cpu")
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
    ids = vocab[list(config.prefix)]
    assert config.prefix + "".join(vocab.to_tokens(generate_ids(model, ids, 60)[0].tolist())) \
        == printed
    fp32 = build_model(len(vocab), TrainConfig(**{**config.to_dict(), "precision": "fp32"}))
    fp32.load_state_dict(model.state_dict())
    assert generate_ids(fp32.eval(), ids, 60)[0].tolist() == \
        generate_ids(model, ids, 60)[0].tolist()
    assert all(torch.isfinite(p).all() for p in model.parameters())
