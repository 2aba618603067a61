"""`rnnkit bench`: the book's loop, torch.nn.RNN and rnnkit's fast paths, side by side in one
process on the chapter's configuration (batch 32, 35 steps, hidden 512, vocab 28).

Prints a table and one JSON line. Speeds are medians over interleaved rounds, so a noisy
machine slows every contender alike; compare the ratios, not the absolute figures.
"""
from __future__ import annotations

import json
import platform
import random
import statistics
import time

import numpy as np
import torch
from torch import nn

from . import d2l, fastloop
from .data import load_corpus, sequential_batches, split_corpus
from .generate import beam_search, generate_ids
from .models import GRUScratch, LSTMScratch, RNNScratch, TorchRNN
from .perf import keep_freed_memory, torch_threads, training_threads
from .train import perplexity, train_epoch

V, H, B, T = 28, 512, 32, 35
FLOP_PER_TOKEN = 6 * (H * H + 2 * V * H)   # forward 2(VH + HH + HV), backward twice that


def contenders() -> dict:
    """name → a function that trains one epoch over a list of (X, Y) batches."""
    torch.manual_seed(0)
    book = d2l.RNNModelScratch(V, H, "cpu", d2l.get_params, d2l.init_rnn_state, d2l.rnn)
    concise = d2l.RNNModel(nn.RNN(V, H), V)
    concise_sgd = torch.optim.SGD(concise.parameters(), lr=1)
    loss = nn.CrossEntropyLoss()
    fast = {p: RNNScratch(V, H, impl="bptt", precision=p,
                          generator=torch.Generator().manual_seed(0)) for p in ("fp32", "bf16")}
    sgd = {p: torch.optim.SGD(m.parameters(), lr=1) for p, m in fast.items()}
    compiled = {p: RNNScratch(V, H, impl="compiled", precision=p,
                              generator=torch.Generator().manual_seed(0))
                for p in ("fp32", "bf16") if p == "fp32" or fastloop.has_bf16()}
    compiled_sgd = {p: torch.optim.SGD(m.parameters(), lr=1) for p, m in compiled.items()}

    def compiled_epoch(batches, p):                  # on torch threads as training sets them
        with torch_threads(training_threads("compiled")):
            return train_epoch(compiled[p], batches, compiled_sgd[p], clip=1, carry_state=True)
    return {
        "book loop": lambda batches: d2l.train_epoch_ch8(
            book, batches, loss, lambda batch_size: d2l.sgd(book.params, 1, batch_size),
            "cpu", False),
        "torch.nn.RNN": lambda batches: d2l.train_epoch_ch8(
            concise, batches, loss, concise_sgd, "cpu", False),
        **{f"bptt {p}": (lambda batches, p=p: train_epoch(fast[p], batches, sgd[p], clip=1,
                                                          carry_state=True))
           for p in fast},
        **{f"compiled {p}": (lambda batches, p=p: compiled_epoch(batches, p))
           for p in (compiled if fastloop.library() else ())},
    }


def gated_contenders() -> dict:
    """GRU and LSTM: the autograd loops, the hand-derived BPTT, and torch's own layers."""
    out = {}
    for cell, cls in (("GRU", GRUScratch), ("LSTM", LSTMScratch)):
        models = {"autograd": cls(V, H, generator=torch.Generator().manual_seed(0)),
                  "bptt": cls(V, H, impl="bptt", generator=torch.Generator().manual_seed(0)),
                  f"nn.{cell}": TorchRNN(V, H, cell=cell.lower())}
        for name, m in models.items():
            opt = torch.optim.SGD(m.parameters(), lr=1)
            out[f"{cell} {name}"] = (lambda batches, m=m, opt=opt: train_epoch(
                m, batches, opt, clip=1, carry_state=True))
    return out


def training_speed(epochs: dict, batches: list, rounds: int) -> dict[str, float]:
    """Median tokens/s of each contender over `rounds` interleaved passes over `batches`."""
    speeds = {name: [] for name in epochs}
    for run in epochs.values():                              # warm-up
        run(batches[:1])
    for _ in range(rounds):
        for name, run in epochs.items():
            start = time.perf_counter()
            run(batches)
            speeds[name].append(len(batches) * B * T / (time.perf_counter() - start))
    return {name: statistics.median(v) for name, v in speeds.items()}


def gemm_gflops(n: int, dtype=torch.float32, m: int | None = None, repeats: int = 5) -> float:
    m = m or n
    a, b = torch.randn(m, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(max(1, 2000 // n)):
            a @ b
        times.append((time.perf_counter() - start) / max(1, 2000 // n))
    return 2 * m * n * n / statistics.median(times) / 1e9


def median_seconds(fn, rounds: int) -> float:
    """The median wall time of `rounds` calls of fn, after one call that warms it."""
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def generation_speed(quick: bool) -> dict[str, float]:
    _, vocab = load_corpus()
    torch.manual_seed(0)
    net = d2l.RNNModelScratch(V, H, "cpu", d2l.get_params, d2l.init_rnn_state, d2l.rnn)
    model = RNNScratch(V, H)
    with torch.no_grad():
        for p, q in zip(model.parameters(), net.params):
            p.copy_(q)
    n = 500 if quick else 2000
    prefix = "time traveller"
    out = {}
    for name, fn in (
            ("book predict_ch8", lambda: d2l.predict_ch8_loop(prefix, n, net, vocab, "cpu")),
            ("fast, 1 stream", lambda: generate_ids(model, vocab[list(prefix)], n)),
            ("fast, 64 streams", lambda: generate_ids(model, vocab[list(prefix)], n // 4,
                                                      num_samples=64, temperature=1.0, seed=0))):
        chars = n if "64" not in name else 64 * (n // 4)
        out[name] = chars / median_seconds(fn, 3 if quick else 5)
    assert d2l.predict_ch8_loop(prefix, 100, net, vocab, "cpu") == \
        d2l.predict_ch8(prefix, 100, net, vocab, "cpu")           # same text, faster
    return out


def beam_speed(quick: bool) -> dict[str, float]:
    """Characters/s of the best continuation: beam search of width 8 against greedy decoding
    through the same batched torch step (the chapter's model, untrained weights)."""
    _, vocab = load_corpus()
    model = RNNScratch(V, H, generator=torch.Generator().manual_seed(0))
    prefix, n = vocab[list("time traveller")], 200 if quick else 1000
    out = {}
    for name, fn in (("greedy", lambda: beam_search(model, prefix, n, beam=1)),
                     ("beam 8", lambda: beam_search(model, prefix, n, beam=8))):
        fn()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        out[name] = n / statistics.median(times)
    return out


def thread_speed(quick: bool) -> dict[str, float]:
    """One stream of greedy text through torch's LSTM (the quality preset's kind, 384 wide) at
    1 and 2 threads, on a quiet machine and next to one busy process: why small steps run on
    one thread (perf.threads_for)."""
    import subprocess
    import sys
    model = TorchRNN(V, 384, cell="lstm").eval()
    prefix, n = [1, 2, 3], 300 if quick else 2000
    threads, out = torch.get_num_threads(), {}

    def speed() -> float:
        generate_ids(model, prefix, 20)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            generate_ids(model, prefix, n)
            times.append(time.perf_counter() - start)
        return n / statistics.median(times)
    try:
        for busy in (False, True):
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
            try:
                for k in (1, 2):
                    torch.set_num_threads(k)
                    out[f"{k} thread{'s' * (k > 1)}, {'one busy process' if busy else 'quiet'}"] \
                        = speed()
            finally:
                if hog:
                    hog.kill()
                    hog.wait()
    finally:
        torch.set_num_threads(threads)
    return out


def mixture_speed(quick: bool) -> dict[str, dict[str, float]]:
    """Characters/s of an LSTM-384 (torch, the quality preset's kind) alone and mixed with a
    6-gram model of The Time Machine, weights fitted on its held-out tenth: greedy, sampled
    (temperature 1), beam 8 and 8 sampled streams (the lab's), at 1 and 2 threads. Rounds
    interleave the two and start with an empty count cache, as a fresh `rnnkit generate` does.
    Untrained weights: the fitted weights lean on the counts, so the text visits real contexts."""
    from .ngram import fit_mixture
    ids, vocab = load_corpus()
    train, val, _ = split_corpus(ids, 0.1, -1)
    network = TorchRNN(len(vocab), 384, cell="lstm").eval()
    mixture = fit_mixture(network, np.asarray(train), np.asarray(val), len(vocab), 5,
                          batch_size=32, num_steps=100).eval()
    prefix, n = vocab[list("the time traveller")], 300 if quick else 1500
    jobs = {"greedy": lambda m, seed: generate_ids(m, prefix, n),
            "sampled": lambda m, seed: generate_ids(m, prefix, n, temperature=1.0, seed=seed),
            "beam 8": lambda m, seed: beam_search(m, prefix, n // 4, beam=8),
            "8 streams": lambda m, seed: generate_ids(m, prefix, n // 4, num_samples=8,
                                                      temperature=1.0, seed=seed)}
    chars = {"greedy": n, "sampled": n, "beam 8": n // 4, "8 streams": 8 * (n // 4)}
    threads, out = torch.get_num_threads(), {}
    try:
        for k in (1, 2):
            torch.set_num_threads(k)
            for job, fn in jobs.items():
                times = {"network": [], "mixture": []}
                for seed in range(3 if quick else 7):
                    for name, model in (("network", network), ("mixture", mixture)):
                        mixture.forget()
                        start = time.perf_counter()
                        fn(model, seed)
                        times[name].append(time.perf_counter() - start)
                out[f"{job}, {k} thread{'s' * (k > 1)}"] = {
                    name: chars[job] / statistics.median(t) for name, t in times.items()}
    finally:
        torch.set_num_threads(threads)
    return out


def greedy_ceiling(quick: bool) -> dict[str, float]:
    """What bounds one stream's greedy step and the lab's trace: µs of one H×H GEMV (numpy on
    a column- and a row-major W_hh, torch.mv) and ms of the bare recurrence (GEMV + add + tanh,
    no output layer) over 10,000 characters: numpy's loop (`rnn_step_numpy`, one core), and
    `fastloop`'s compiled one on 1 and 2 threads, the last also beside one busy process."""
    import os
    import subprocess
    import sys

    from .generate import rnn_step_numpy
    rng = np.random.default_rng(0)
    W = (rng.standard_normal((H, H)) * 0.05).astype(np.float32)           # (H, H)
    h, z = rng.standard_normal(H).astype(np.float32), np.empty(H, np.float32)

    def micros(fn, n: int = 2000) -> float:
        fn()
        start = time.perf_counter()
        for _ in range(n):
            fn()
        return 1e6 * (time.perf_counter() - start) / n
    W_col, W_t, h_t = np.asfortranarray(W), torch.from_numpy(W), torch.from_numpy(h)
    out = {"numpy GEMV, column-major W (us)": micros(lambda: np.dot(h, W_col, out=z)),
           "numpy GEMV, row-major W (us)": micros(lambda: np.dot(h, W, out=z)),
           "torch.mv (us)": micros(lambda: torch.mv(W_t.T, h_t))}
    rows = rng.standard_normal((10_000, H)).astype(np.float32)           # X_t W_xh + b_h
    states, h0 = np.zeros_like(rows), np.zeros(H, np.float32)

    def numpy_loop():
        state = h0
        for t in range(len(rows)):
            state = rnn_step_numpy(state, W_col, rows[t], z, out=states[t])

    ms = lambda fn: 1000 * median_seconds(fn, 2 if quick else 5)  # noqa: E731
    out["numpy loop, 10,000 characters (ms)"] = ms(numpy_loop)
    if fastloop.library() is None:
        return out
    packed, saved = fastloop.pack_columns(W), os.environ.get("RNNKIT_FASTLOOP_THREADS")
    compiled = lambda: fastloop.rnn_trace(rows, packed, h0, out=states)  # noqa: E731
    try:
        for name, k, busy in (("1 thread", 1, False), ("2 threads", 2, False),
                              ("2 threads, one busy process", 2, True)):
            os.environ["RNNKIT_FASTLOOP_THREADS"] = str(k)
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
            try:
                out[f"compiled loop, {name} (ms)"] = ms(compiled)
            finally:
                if hog:
                    hog.kill()
                    hog.wait()
    finally:
        os.environ.pop("RNNKIT_FASTLOOP_THREADS", None)
        if saved is not None:
            os.environ["RNNKIT_FASTLOOP_THREADS"] = saved
    return out


def lab_read_ms(quick: bool) -> dict[str, float]:
    """Milliseconds of the lab's read panel for 10,000 characters on the chapter's model, in
    this process set as `rnnkit serve` sets its own (BLAS on one thread, start-up objects
    frozen; benchmarks/serve.py times it over HTTP): the trace (one GEMV of W_hh a character),
    then score and units as the page asks for them (JSON, binary units)."""
    import gc

    import orjson
    from threadpoolctl import threadpool_limits

    from . import lab
    from .server import units_binary
    ids, vocab = load_corpus()
    ids = [int(i) for i in ids[:10_000]]
    tokens = vocab.to_tokens(ids)
    model = RNNScratch(V, H, generator=torch.Generator().manual_seed(0))
    out = {"trace": [], "score + units": []}
    gc.freeze()
    try:
        with threadpool_limits(1, user_api="blas"):
            for _ in range(3 if quick else 6):
                start = time.perf_counter()
                traced = model.trace(ids)
                mid = time.perf_counter()
                orjson.dumps(lab.score(traced, ids), option=orjson.OPT_SERIALIZE_NUMPY)
                shown = lab.units(traced, tokens, 0, "h")
                units_binary(shown, shown.pop("values"))              # as the page asks
                out["trace"].append(mid - start)
                out["score + units"].append(time.perf_counter() - mid)
    finally:
        gc.unfreeze()
    return {k: 1000 * statistics.median(v[1:]) for k, v in out.items()}   # after a warm one


def chapter_curves(epochs: int) -> dict[str, list[float]]:
    """Training perplexity per epoch of the chapter's run, fp32 and bf16, same seed and data."""
    ids, _ = load_corpus()
    train, _, _ = split_corpus(ids, 0.1, 10_000)
    curves = {}
    for precision in ("fp32", "bf16"):
        model = RNNScratch(V, H, impl="bptt", precision=precision,
                           generator=torch.Generator().manual_seed(0))
        opt = torch.optim.SGD(model.parameters(), lr=1)
        curves[precision] = []
        for epoch in range(epochs):
            batches = sequential_batches(train, B, T, random.Random(f"rnnkit:0:{epoch}"))
            loss, tokens, _ = train_epoch(model, batches, opt, clip=1, carry_state=True)
            curves[precision].append(perplexity(loss, tokens))
    return curves


def target_table(speeds: dict, gen: dict, mixed: dict, read: dict
                 ) -> dict[str, tuple[float, float, float]]:
    """name → (measured, target, share of the target reached) for what issue 23 asks; ms are
    better lower, so their share is target / measured."""
    book, rnn = speeds["book loop"], speeds["torch.nn.RNN"]
    fp32 = speeds.get("compiled fp32", speeds["bptt fp32"])      # the fastest there is
    bf16 = speeds.get("compiled bf16", speeds["bptt bf16"])
    out = {"fp32 x book loop": (fp32 / book, 1.6),
           "fp32 x nn.RNN": (fp32 / rnn, 1.5),
           "bf16 x book loop": (bf16 / book, 3.2),
           "greedy x predict_ch8": (gen["fast, 1 stream"] / gen["book predict_ch8"], 8.0)}
    for name, v in mixed.items():
        out[f"mixed x alone, {name}"] = (v["mixture"] / v["network"], 0.8)
    ms = read["trace"] + read["score + units"]
    table = {k: (a, b, a / b) for k, (a, b) in out.items()}
    table["lab read panel, ms"] = (ms, 100.0, 100.0 / ms)
    return table


def main(quick: bool = False, json_out: str | None = None) -> int:
    malloc_tuned = keep_freed_memory()
    ids, _ = load_corpus()
    train, _, _ = split_corpus(ids, 0.1, 10_000)
    batches = list(sequential_batches(train, B, T, random.Random(0)))
    rounds = 3 if quick else 9
    threads = torch.get_num_threads()
    speeds = training_speed(contenders(), batches[: 4 if quick else 8], rounds)
    gated = training_speed(gated_contenders(), batches[:2 if quick else 4], 2 if quick else 5)
    gemm = {"fp32 2048^3": gemm_gflops(2048), "fp32 32x512x512": gemm_gflops(512, m=32),
            "bf16 2048^3": gemm_gflops(2048, torch.bfloat16)}
    torch.set_num_threads(1)
    one_thread = training_speed({"bptt fp32": contenders()["bptt fp32"]}, batches[:4],
                                3)["bptt fp32"]
    torch.set_num_threads(threads)
    gen = generation_speed(quick)
    beam = beam_speed(quick)
    by_threads = thread_speed(quick)
    mixed = mixture_speed(quick)
    read = lab_read_ms(quick)
    torch.set_num_threads(1)               # one stream's steps run on one thread (perf.py)
    ceiling = greedy_ceiling(quick)
    torch.set_num_threads(threads)
    curves = chapter_curves(20 if quick else 500)

    base = speeds["book loop"]

    print(f"rnnkit bench — {platform.processor() or platform.machine()}, "
          f"{threads} threads, torch {torch.__version__}, malloc tuned: {malloc_tuned}, "
          f"one-stream loops: {fastloop.status()}")
    print(f"{'training (B=32, T=35, H=512)':32s} {'tokens/s':>10s} {'x book':>7s} "
          f"{'x nn.RNN':>8s} {'GFLOP/s':>8s}")
    for name, v in speeds.items():
        print(f"{name:32s} {v:10,.0f} {v / base:7.2f} {v / speeds['torch.nn.RNN']:8.2f} "
              f"{v * FLOP_PER_TOKEN / 1e9:8.1f}")
    print(f"{'bptt fp32, 1 thread':32s} {one_thread:10,.0f} {one_thread / base:7.2f}")
    print(f"{'gated cells (fp32, H=512)':32s} {'tokens/s':>10s} {'x autograd':>10s}")
    for name, v in gated.items():
        print(f"{name:32s} {v:10,.0f} {v / gated[name.split()[0] + ' autograd']:10.2f}")
    for name, v in gemm.items():
        print(f"GEMM {name:27s} {v:10.1f} GFLOP/s")
    gbase = gen["book predict_ch8"]
    print(f"{'generation (greedy / sampled)':32s} {'chars/s':>10s} {'x book':>7s}")
    for name, v in gen.items():
        print(f"{name:32s} {v:10,.0f} {v / gbase:7.1f}")
    print(f"{'beam search, width 8':32s} {beam['beam 8']:10,.0f} "
          f"{beam['beam 8'] / beam['greedy']:7.2f} x greedy through the same step "
          f"({beam['greedy']:,.0f} chars/s)")
    print(f"{'one stream, LSTM-384 (torch)':32s} {'chars/s':>10s}")
    for name, v in by_threads.items():
        print(f"  {name:30s} {v:10,.0f}")
    print(f"{'the n-gram mixture (LSTM-384)':32s} {'alone':>10s} {'mixed':>8s} {'ratio':>6s}")
    for name, v in mixed.items():
        print(f"  {name:30s} {v['network']:10,.0f} {v['mixture']:8,.0f} "
              f"{v['mixture'] / v['network']:6.2f}")
    print(f"{'lab read panel, 10,000 chars':32s} {read['trace']:7.0f} ms trace + "
          f"{read['score + units']:.0f} ms score and units (in process)")
    print(f"{'one stream, H=512, GEMV':32s} " + ", ".join(
        f"{k} {v:.1f}" for k, v in ceiling.items() if k.endswith("(us)")))
    for k, v in ceiling.items():
        if k.endswith("(ms)"):      # the recurrence alone bounds greedy text and the trace
            print(f"  {k:44s} {v:7.1f}: ≤ {1e7 / v:9,.0f} chars/s, "
                  f"{1e7 / v / gbase:5.1f}x predict_ch8")
    targets = target_table(speeds, gen, mixed, read)
    print(f"{'targets (issue 23)':40s} {'measured':>9s} {'target':>7s} {'of it':>6s}")
    for name, (got, want, share) in targets.items():
        print(f"  {name:38s} {got:9.2f} {want:7.2f} {share:6.0%}")
    every = max(1, len(curves["fp32"]) // 10)
    print("chapter run, training perplexity by epoch (fp32 | bf16):")
    for i in list(range(every - 1, len(curves["fp32"]), every)):
        print(f"  epoch {i + 1:4d}  {curves['fp32'][i]:8.3f} | {curves['bf16'][i]:8.3f}")
    result = {"threads": threads, "malloc_tuned": malloc_tuned, "torch": torch.__version__,
              "fastloop": fastloop.status(),
              "quick": quick, "train_tokens_per_s": speeds,
              "train_ratio_vs_book": {k: v / base for k, v in speeds.items()},
              "train_ratio_vs_nn_rnn": {k: v / speeds["torch.nn.RNN"] for k, v in speeds.items()},
              "bptt_fp32_one_thread": one_thread, "gated_tokens_per_s": gated,
              "achieved_gflops": {k: v * FLOP_PER_TOKEN / 1e9 for k, v in speeds.items()},
              "gemm_gflops": gemm, "generate_chars_per_s": gen,
              "generate_ratio_vs_book": {k: v / gbase for k, v in gen.items()},
              "beam_chars_per_s": beam, "one_stream_by_threads": by_threads,
              "mixture_chars_per_s": mixed, "lab_read_ms": read, "greedy_ceiling": ceiling,
              "targets": {k: {"measured": a, "target": b, "share": c}
                          for k, (a, b, c) in targets.items()},
              "final_ppl": {k: c[-1] for k, c in curves.items()}, "curves": curves}
    line = json.dumps(result)
    print(line)
    if json_out:
        with open(json_out, "w") as f:
            f.write(line + "\n")
    return 0
