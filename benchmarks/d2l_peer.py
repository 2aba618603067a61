"""rnnkit against the published d2l 0.17.6 library, each in its own process, same machine,
alternating rounds: the chapter's training epoch (B 32, T 35, H 512: the from-scratch loop and
the concise `nn.RNN` model, timed by the book's own `train_epoch_ch8`) against rnnkit's `bptt`
fp32 and bf16 and `compiled` fp32 and bf16, and greedy `predict_ch8` against rnnkit's single-stream
greedy decoding.

    python benchmarks/d2l_peer.py [--wheel d2l-0.17.6-py3-none-any.whl] [--rounds 3]

Without --wheel it runs `pip download d2l==0.17.6 --no-deps`. d2l 0.17.6 imports torchvision,
PIL, pandas, requests, IPython and matplotlib_inline at the top, none of which the chapter
calls: where one is missing, the peer process gets an empty stand-in module for it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHARS = 2000                      # greedy characters per timing
EPOCHS = 5                        # timed epochs per round (median); one warms up

PEER = r'''
import importlib.machinery, importlib.util, json, math, sys, time, types
STUBS = {"torchvision": ["transforms"], "PIL": ["Image"], "pandas": [], "requests": [],
         "IPython": ["display"], "matplotlib_inline": ["backend_inline"]}
for name, children in STUBS.items():      # imported at d2l's top, never used by the chapter
    if importlib.util.find_spec(name) is None:
        for full in [name, *(f"{name}.{child}" for child in children)]:
            sys.modules[full] = types.ModuleType(full)
            sys.modules[full].__spec__ = importlib.machinery.ModuleSpec(full, None)
        for child in children:
            setattr(sys.modules[name], child, sys.modules[f"{name}.{child}"])
import torch
from torch import nn
from torch.nn import functional as F
from d2l import torch as d2l
assert d2l.__file__.startswith(sys.argv[1]), d2l.__file__

# the chapter's own code (lecture 55, "RNN from scratch")
def get_params(vocab_size, num_hiddens, device):
    num_inputs = num_outputs = vocab_size
    def normal(shape):
        return torch.randn(size=shape, device=device) * 0.01
    W_xh = normal((num_inputs, num_hiddens))
    W_hh = normal((num_hiddens, num_hiddens))
    b_h = torch.zeros(num_hiddens, device=device)
    W_hq = normal((num_hiddens, num_outputs))
    b_q = torch.zeros(num_outputs, device=device)
    params = [W_xh, W_hh, b_h, W_hq, b_q]
    for param in params:
        param.requires_grad_(True)
    return params

def init_rnn_state(batch_size, num_hiddens, device):
    return (torch.zeros((batch_size, num_hiddens), device=device), )

def rnn(inputs, state, params):
    W_xh, W_hh, b_h, W_hq, b_q = params
    H, = state
    outputs = []
    for X in inputs:
        H = torch.tanh(torch.mm(X, W_xh) + torch.mm(H, W_hh) + b_h)
        Y = torch.mm(H, W_hq) + b_q
        outputs.append(Y)
    return torch.cat(outputs, dim=0), (H,)

torch.manual_seed(0)
train_iter, vocab = d2l.load_data_time_machine(32, 35)
device, loss = torch.device("cpu"), nn.CrossEntropyLoss()
net = d2l.RNNModelScratch(len(vocab), 512, device, get_params, init_rnn_state, rnn)
concise = d2l.RNNModel(nn.RNN(len(vocab), 512), len(vocab))
sgd = torch.optim.SGD(concise.parameters(), lr=1)
scratch_update = lambda batch_size: d2l.sgd(net.params, 1, batch_size)
d2l.train_epoch_ch8(net, train_iter, loss, scratch_update, device, False)      # warm-up
d2l.train_epoch_ch8(concise, train_iter, loss, sgd, device, False)
median = lambda xs: sorted(xs)[len(xs) // 2]
out = {"book loop": median([d2l.train_epoch_ch8(net, train_iter, loss, scratch_update, device,
                                                False)[1] for _ in range(EPOCHS)]),
       "torch.nn.RNN": median([d2l.train_epoch_ch8(concise, train_iter, loss, sgd, device,
                                                   False)[1] for _ in range(EPOCHS)])}
d2l.predict_ch8("time traveller", 50, net, vocab, device)
times = []
for _ in range(3):
    start = time.perf_counter()
    d2l.predict_ch8("time traveller", int(sys.argv[2]), net, vocab, device)
    times.append(time.perf_counter() - start)
out["predict_ch8"] = int(sys.argv[2]) / median(times)
print(json.dumps(out))
'''

OURS = r'''
import json, random, sys, time
import torch
from rnnkit import RNNScratch, load_corpus, sequential_batches, split_corpus, train_epoch
from rnnkit.generate import generate_ids
from rnnkit.perf import keep_freed_memory, torch_threads, training_threads
keep_freed_memory()                                  # as `rnnkit train` sets its process up
ids, vocab = load_corpus()
train, _, _ = split_corpus(ids, 0.0, 10_000)
median = lambda xs: sorted(xs)[len(xs) // 2]
out = {}
for impl, precision in (("bptt", "fp32"), ("bptt", "bf16"), ("compiled", "fp32"),
                        ("compiled", "bf16")):
    model = RNNScratch(len(vocab), 512, impl=impl, precision=precision,
                       generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(model.parameters(), lr=1)
    speeds = []
    with torch_threads(training_threads(impl)):                  # as `rnnkit train` sets them
        for epoch in range(1 + EPOCHS):                         # the first one warms up
            batches = sequential_batches(train, 32, 35, random.Random(epoch))
            loss, tokens, seconds = train_epoch(model, batches, opt, clip=1, carry_state=True)
            speeds.append(tokens / seconds)
    out[f"{impl} {precision}"] = median(speeds[1:])
model = RNNScratch(len(vocab), 512, generator=torch.Generator().manual_seed(0))
prefix = vocab[list("time traveller")]
generate_ids(model, prefix, 50)
times = []
for _ in range(3):
    start = time.perf_counter()
    generate_ids(model, prefix, int(sys.argv[1]))
    times.append(time.perf_counter() - start)
out["greedy"] = int(sys.argv[1]) / median(times)
print(json.dumps(out))
'''


def wheel_dir(wheel: str | None, tmp: Path) -> Path:
    """The d2l 0.17.6 wheel unpacked under tmp (downloaded first without --wheel)."""
    if wheel is None:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "d2l==0.17.6",
                        "--no-deps", "-d", str(tmp / "wheel")], check=True)
        wheel = str(next((tmp / "wheel").glob("d2l-0.17.6-*.whl")))
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp / "lib")
    return tmp / "lib"


def measure(rounds: int, lib: Path, tmp: Path) -> dict[str, list[float]]:
    work, data = tmp / "work", tmp / "data"          # d2l reads ../data/timemachine.txt
    work.mkdir()
    data.mkdir()
    shutil.copy(ROOT / "rnnkit" / "data" / "timemachine.txt", data / "timemachine.txt")
    peer_env = {"PYTHONPATH": str(lib)}
    figures: dict[str, list[float]] = {}
    for _ in range(rounds):                          # alternate: the machine drifts alike
        for code, args, env in ((PEER, [str(lib), str(CHARS)], peer_env),
                                (OURS, [str(CHARS)], {})):
            code = f"EPOCHS = {EPOCHS}\n" + code
            proc = subprocess.run([sys.executable, "-c", code, *args], cwd=work, text=True,
                                  capture_output=True, env={**os.environ, **env})
            if proc.returncode != 0:
                raise SystemExit(f"a measuring process failed:\n{proc.stderr[-2000:]}")
            for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items():
                figures.setdefault(k, []).append(v)
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheel", help="d2l-0.17.6-py3-none-any.whl (default: pip download it)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        figures = measure(args.rounds, wheel_dir(args.wheel, tmp), tmp)
    med = {k: statistics.median(v) for k, v in figures.items()}
    book, concise = med["book loop"], med["torch.nn.RNN"]
    rows = [("book loop (d2l 0.17.6)", med["book loop"], "tokens/s", 1.0, None),
            ("torch.nn.RNN (d2l 0.17.6)", concise, "tokens/s", concise / book, None),
            ("rnnkit bptt fp32", med["bptt fp32"], "tokens/s", med["bptt fp32"] / book, 1.6),
            ("  x the concise nn.RNN model", med["bptt fp32"] / concise, "x", None, 1.5),
            ("rnnkit bptt bf16", med["bptt bf16"], "tokens/s", med["bptt bf16"] / book, 3.2),
            ("rnnkit compiled fp32", med["compiled fp32"], "tokens/s",
             med["compiled fp32"] / book, 1.6),
            ("  x the concise nn.RNN model", med["compiled fp32"] / concise, "x", None, 1.5),
            ("rnnkit compiled bf16", med["compiled bf16"], "tokens/s",
             med["compiled bf16"] / book, 3.2),
            ("predict_ch8 (d2l 0.17.6)", med["predict_ch8"], "chars/s", 1.0, None),
            ("rnnkit greedy, one stream", med["greedy"], "chars/s",
             med["greedy"] / med["predict_ch8"], 8.0)]
    print(f"{'what':34s} {'figure':>12s} {'':8s} {'x peer':>7s} {'target':>7s}")
    for name, value, unit, ratio, target in rows:
        ratio = f"{ratio:7.2f}" if ratio is not None else " " * 7
        target = f"{target:7.1f}" if target is not None else ""
        print(f"{name:34s} {value:12,.2f} {unit:8s} {ratio} {target}")
    print(json.dumps({"benchmark": "d2l_peer", "rounds": args.rounds, "median": med,
                      "all": figures}))


if __name__ == "__main__":
    main()
