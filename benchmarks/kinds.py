"""Speed of each kind of model, side by side in one process: training tokens/s of one layer at
window 128 (minGRU and minLSTM against rnnkit's LSTM, torch.nn.LSTM, of the same width, and the
log-space scan against the in-place recurrence), of whole models, and greedy generation.
Prints a table and one JSON line.

    python benchmarks/kinds.py                # widths 256 and 384 (about 2 minutes)
    python benchmarks/kinds.py --widths 128 --seconds 1
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch import nn

from rnnkit.config import TrainConfig
from rnnkit.generate import generate_ids
from rnnkit.minrnn import MinCell
from rnnkit.models import build_model
from rnnkit.perf import torch_threads, training_threads

BATCH, WINDOW, VOCAB = 32, 128, 65


def rate(step, tokens: int, seconds: float, threads: int) -> float:
    """tokens/s of `step()` on `threads` torch threads, after one untimed call, over at least
    `seconds`."""
    with torch_threads(threads):
        step()
        n, start = 0, time.perf_counter()
        while n < 2 or time.perf_counter() - start < seconds:
            step()
            n += 1
        return n * tokens / (time.perf_counter() - start)


def layer_rates(width: int, seconds: float) -> dict:
    """Forward + backward of one layer over (BATCH, WINDOW, width) inputs."""
    torch.manual_seed(0)
    x = torch.randn(BATCH, WINDOW, width, requires_grad=True)
    lstm = nn.LSTM(width, width, batch_first=True)
    out = {"lstm": rate(lambda: lstm(x)[0].sum().backward(), BATCH * WINDOW, seconds,
                        training_threads("torch", "lstm"))}
    h0 = torch.zeros(BATCH, width)
    for kind in ("mingru", "minlstm"):
        cell = MinCell(kind, width, width)
        out[kind] = rate(lambda: cell.train_states(x, h0).sum().backward(), BATCH * WINDOW,
                         seconds, training_threads("torch", kind))
        out[f"{kind} (log-space scan)"] = rate(lambda: cell.scan(x, h0).sum().backward(),
                                               BATCH * WINDOW, seconds, torch.get_num_threads())
    return out


def model_rates(width: int, seconds: float) -> dict:
    """A training step (forward, loss, backward, AdamW) of whole models, and greedy
    generation of 500 characters after a 20-character prefix (one stream, one thread)."""
    out = {}
    kinds = {"lstm": dict(cell="lstm", embed=64),
             "mingru": dict(cell="mingru", layers=2), "minlstm": dict(cell="minlstm", layers=2),
             "transformer": dict(cell="transformer", layers=4)}
    X = torch.randint(0, VOCAB, (BATCH, WINDOW))
    for name, kw in kinds.items():
        config = TrainConfig(impl="torch", hidden=width, num_steps=WINDOW, **kw)
        model = build_model(VOCAB, config).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def step():
            logits, _ = model(X, model.begin_state(BATCH))
            F.cross_entropy(logits.reshape(-1, VOCAB), X.T.reshape(-1)).backward()
            opt.step()
            opt.zero_grad()
        train = rate(step, BATCH * WINDOW, seconds, training_threads("torch", kw["cell"]))
        model.eval()
        gen = rate(lambda: generate_ids(model, list(range(20)), 500), 500, seconds, 1)
        out[name] = {"train_tokens_per_s": train, "generate_chars_per_s": gen,
                     "parameters": sum(p.numel() for p in model.parameters()),
                     "layers": config.layers}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=int, nargs="*", default=[256, 384])
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    rows = []
    print(f"one layer, forward + backward, batch {BATCH} x window {WINDOW} "
          f"(each kind on the torch threads `rnnkit train` gives it)")
    print("| width | LSTM tokens/s | minGRU | minLSTM | minGRU ÷ LSTM (target ≥ 3) | "
          "minLSTM ÷ LSTM | minGRU by the log-space scan |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for width in args.widths:
        r = layer_rates(width, args.seconds)
        rows.append({"width": width, "layer": r})
        print(f"| {width} | {r['lstm']:,.0f} | {r['mingru']:,.0f} | {r['minlstm']:,.0f} | "
              f"{r['mingru'] / r['lstm']:.2f}× | {r['minlstm'] / r['lstm']:.2f}× | "
              f"{r['mingru (log-space scan)']:,.0f} |")
    print("\nwhole models: training step (AdamW) and greedy generation (one thread)")
    print("| width | kind | layers | parameters | train tokens/s | generate chars/s |")
    print("|---:|---|---:|---:|---:|---:|")
    for row, width in zip(rows, args.widths):
        row["models"] = model_rates(width, args.seconds)
        for name, m in row["models"].items():
            print(f"| {width} | {name} | {m['layers']} | {m['parameters']:,} | "
                  f"{m['train_tokens_per_s']:,.0f} | {m['generate_chars_per_s']:,.0f} |")
    print(json.dumps({"benchmark": "kinds", "batch": BATCH, "window": WINDOW, "rows": rows}))


if __name__ == "__main__":
    main()
