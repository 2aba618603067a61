"""Training and generation speed on one device, side by side in one process: the book's loop
(d2l 0.17's `train_epoch_ch8` on `RNNModelScratch`), its concise `nn.RNN` model (cuDNN on
CUDA), and rnnkit's `bptt` and `torch` paths, at the chapter's batch (32 × 35) and the English
edition's (1024 × 32), fp32 and bf16; then greedy generation in characters/s.

    python benchmarks/gpu_speed.py --device cuda [--quick] [--json-out speed.json]

Medians over interleaved rounds; CUDA work is synchronised before each clock read.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch
from torch import nn

from rnnkit import d2l
from rnnkit.data import load_corpus, sequential_batches
from rnnkit.generate import generate_ids
from rnnkit.models import RNNScratch, TorchRNN
from rnnkit.train import Autocast, train_epoch

V, H = 28, 512


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def contenders(device: torch.device) -> dict:
    """name → a function that trains one epoch over a list of (X, Y) batches on `device`."""
    torch.manual_seed(0)
    book = d2l.RNNModelScratch(V, H, device, d2l.get_params, d2l.init_rnn_state, d2l.rnn)
    concise = d2l.RNNModel(nn.RNN(V, H), V).to(device)
    concise_sgd = torch.optim.SGD(concise.parameters(), lr=1)
    loss = nn.CrossEntropyLoss()
    out = {
        "book loop fp32": lambda b: d2l.train_epoch_ch8(
            book, b, loss, lambda batch_size: d2l.sgd(book.params, 1, batch_size), device, False),
        "nn.RNN fp32": lambda b: d2l.train_epoch_ch8(concise, b, loss, concise_sgd, device, False),
    }
    for precision in ("fp32", "bf16"):
        fast = RNNScratch(V, H, impl="bptt", precision=precision,
                          generator=torch.Generator().manual_seed(0)).to(device)
        opt = torch.optim.SGD(fast.parameters(), lr=1)
        out[f"rnnkit bptt {precision}"] = (lambda b, m=fast, o=opt: train_epoch(
            m, b, o, clip=1, carry_state=True, device=device))
        layer = TorchRNN(V, H).to(device)
        opt = torch.optim.SGD(layer.parameters(), lr=1)
        amp = Autocast(device.type, torch.bfloat16 if precision == "bf16" else None)
        out[f"rnnkit torch {precision}"] = (lambda b, m=layer, o=opt, a=amp: train_epoch(
            m, b, o, clip=1, carry_state=True, device=device, amp=a))
    return out


def training_speed(device: torch.device, batch: int, steps: int, rounds: int,
                   max_batches: int) -> dict[str, float]:
    """Median tokens/s of each contender over `rounds` interleaved passes."""
    ids, _ = load_corpus()
    batches = [(X.to(device), Y.to(device)) for X, Y in
               sequential_batches(ids, batch, steps, random.Random(0))][:max_batches]
    runs = contenders(device)
    speeds = {name: [] for name in runs}
    for run in runs.values():                              # warm-up (cuDNN plans, allocator)
        run(batches[:2])
    for _ in range(rounds):
        for name, run in runs.items():
            _sync(device)
            start = time.perf_counter()
            run(batches)
            _sync(device)
            speeds[name].append(len(batches) * batch * steps / (time.perf_counter() - start))
    return {name: statistics.median(v) for name, v in speeds.items()}


def generation_speed(device: torch.device, n: int) -> dict[str, float]:
    """Greedy characters/s after the prefix "time traveller": the book's predict_ch8 and
    rnnkit's stepper, the same untrained weights."""
    _, vocab = load_corpus()
    torch.manual_seed(0)
    net = d2l.RNNModelScratch(V, H, device, d2l.get_params, d2l.init_rnn_state, d2l.rnn)
    model = RNNScratch(V, H).to(device)
    with torch.no_grad():
        for p, q in zip(model.parameters(), net.params):
            p.copy_(q)
    prefix = "time traveller"
    out = {}
    for name, fn in (("book predict_ch8", lambda: d2l.predict_ch8(prefix, n, net, vocab, device)),
                     ("rnnkit greedy", lambda: generate_ids(model, vocab[list(prefix)], n,
                                                            device=device))):
        fn()
        times = []
        for _ in range(3):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - start)
        out[name] = n / statistics.median(times)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="fewer batches and rounds (CPU check)")
    p.add_argument("--json-out")
    a = p.parse_args()
    device = torch.device(a.device)
    rounds, max_batches, chars = (1, 3, 200) if a.quick else (3, 40, 2000)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "training": {}, "generation": {}}
    for batch, steps in ((32, 35), (1024, 32)):
        speeds = training_speed(device, batch, steps, rounds, max_batches)
        result["training"][f"{batch}x{steps}"] = speeds
        book = speeds["book loop fp32"]
        print(f"\ntraining, batch {batch} x {steps} ({device}): tokens/s, × the book's loop")
        for name, v in speeds.items():
            print(f"  {name:<20} {v:>14,.0f}  {v / book:6.2f}×")
    result["generation"] = generation_speed(device, chars)
    print("\ngreedy generation: characters/s")
    for name, v in result["generation"].items():
        print(f"  {name:<20} {v:>14,.0f}")
    print(json.dumps(result))
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
