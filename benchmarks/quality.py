"""Quality benchmark: `rnnkit train --preset quality` on texts whose difficulty is known.

Corpora: synthetic texts from Markov sources of known order and entropy rate (a Latin and a
CJK alphabet, 100 KB to 1 MB), The Time Machine (whole book) and Tiny Shakespeare, each with
its last 10% held out. Every held-out slice is scored by
  - rnnkit:  the quality preset at a time budget (validation loss of the model it ends on: the
             best epoch's network with its Kneser–Ney model mixed in; the network alone too),
  - floor:   the source's entropy rate (Markov sources only: no model can beat it on average),
  - oracle:  a counting model that knows the true order, with its best smoothing (Markov only),
  - n-gram:  interpolated Kneser–Ney over characters, order chosen on the held-out slice,
  - bzip2 / xz: compressed size of train + held-out minus that of train alone.
rnnkit's evaluation reads the held-out slice in rows of whole windows (~96% of its characters):
the table compares it with the oracle and the n-gram model on exactly those characters (the
JSON also has their figures over the whole slice). Prints a table and one JSON line.

    python benchmarks/quality.py                      # everything (about 45 minutes)
    python benchmarks/quality.py --only latin-o2 tm   # some corpora
    python benchmarks/quality.py --budget-scale 0.1   # a quick look (budgets / 10)
    python benchmarks/quality.py --only shakespeare --budgets 300 \
        --kinds lstm mingru minlstm transformer     # every kind side by side (about 25 min)
"""
from __future__ import annotations

import argparse
import bz2
import collections
import json
import lzma
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
LATIN = "abcdefghijklmnopqrstuvwxyz "
CJK = "".join(chr(0x4E00 + i) for i in range(0, 3000, 7))     # 429 common-range ideographs

# name: (alphabet, size, order, successors per context, characters, seconds of training)
MARKOV = {
    "latin-o1": (LATIN, 27, 1, 6, 100_000, 60),
    "latin-o2": (LATIN, 27, 2, 5, 300_000, 120),
    "latin-o3": (LATIN, 27, 3, 4, 1_000_000, 180),
    "cjk-o1": (CJK, 300, 1, 12, 150_000, 90),
    "cjk-o2": (CJK, 60, 2, 5, 500_000, 180),
}
# name: (file, seconds of training); the first budget is the target's, the others reported
REAL = {"tm": (None, (240, 600)), "shakespeare": (SHARED / "tinyshakespeare.txt", (86, 600))}


# ---- Markov sources with a known entropy rate -------------------------------------------------
def markov_source(alphabet: str, size: int, order: int, successors: int, n: int, seed: int = 0):
    """(text, entropy rate in bits/char): each context (the last `order` characters) allows
    `successors` random next characters with Dirichlet(1) probabilities."""
    rng = np.random.default_rng(seed)
    states = size ** order
    nxt = np.stack([rng.choice(size, successors, replace=False) for _ in range(states)])
    prob = rng.dirichlet(np.ones(successors), states)                    # (states, successors)
    # stationary distribution of the context chain (power iteration over reachable contexts)
    pi = np.full(states, 1 / states)
    target = (np.arange(states)[:, None] * size + nxt) % states          # next context
    for _ in range(2000):
        new = np.bincount(target.ravel(), (pi[:, None] * prob).ravel(), minlength=states)
        if np.abs(new - pi).sum() < 1e-12:
            break
        pi = new
    entropy = float(-(pi[:, None] * prob * np.log2(prob)).sum())
    state, out = int(rng.integers(states)), np.empty(n, dtype=np.int64)
    draws = rng.random(n)
    cum = prob.cumsum(1)
    for i in range(n):
        c = nxt[state, min(int(np.searchsorted(cum[state], draws[i])), successors - 1)]
        out[i] = c
        state = (state * size + c) % states
    return "".join(alphabet[c] for c in out), entropy


# ---- counting models --------------------------------------------------------------------------
def counts(text: str, order: int) -> dict:
    table = collections.defaultdict(collections.Counter)
    for i in range(order, len(text)):
        table[text[i - order:i]][text[i]] += 1
    return table


def oracle_bits(train: str, val: str, order: int, alphabet_size: int) -> np.ndarray:
    """Bits of each held-out character (len(val),) under the true-order counting model with
    the additive smoothing best on the whole held-out slice."""
    table = counts(train, order)
    totals = {h: sum(c.values()) for h, c in table.items()}
    history = train[-order:] + val
    best = None
    for alpha in (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0):
        bits = np.array([-math.log2((table.get(history[i - order:i], {}).get(history[i], 0)
                                     + alpha) / (totals.get(history[i - order:i], 0)
                                                 + alpha * alphabet_size))
                         for i in range(order, len(history))])
        if best is None or bits.mean() < best.mean():
            best = bits
    return best


def kneser_ney_bits(train: str, val: str, max_order: int = 7) -> tuple[np.ndarray, int]:
    """(bits of each held-out character (len(val),), context length) of interpolated
    Kneser–Ney at the context length best on the whole held-out slice."""
    vocab = len(set(train) | set(val)) + 1
    tables = [counts(train, k) for k in range(max_order)]          # tables[k]: context length k
    # continuation counts: in how many distinct contexts a character follows h (lower orders)
    cont = [collections.defaultdict(collections.Counter) for _ in range(max_order)]
    for k in range(1, max_order):
        for h, c in tables[k].items():
            for ch in c:
                cont[k - 1][h[1:]][ch] += 1
    discounts = []
    for k in range(max_order):
        n = collections.Counter(v for c in tables[k].values() for v in c.values())
        discounts.append(n[1] / (n[1] + 2 * n[2]) if n[1] and n[2] else 0.75)

    def prob(h: str, ch: str, k: int, top: int) -> float:
        lower = 1 / vocab if k == 0 else prob(h[1:], ch, k - 1, top)
        table = tables[k] if k == top else cont[k]
        c = table.get(h[len(h) - k:] if k else "")
        if not c:
            return lower
        total, d = sum(c.values()), discounts[k]
        return max(c.get(ch, 0) - d, 0) / total + d * len(c) / total * lower

    best = None
    history = train[-max_order:] + val
    for top in range(1, max_order):
        bits = np.array([-math.log2(prob(history[i - top:i], history[i], top, top))
                         for i in range(max_order, len(history))])
        if best is None or bits.mean() < best[0].mean():
            best = (bits, top)
    return best


def scored_positions(n_val: int, batch_size: int, num_steps: int) -> np.ndarray:
    """The held-out characters rnnkit's evaluation scores (`train.held_out_batches`: rows of
    whole windows, ~96% of the slice), so that every model is compared on the same ones."""
    from rnnkit.train import held_out_batches
    starts = held_out_batches(np.zeros(n_val, np.int64), batch_size, num_steps).starts
    return (starts[:, :, None] + 1 + np.arange(num_steps)).ravel()


def compressor_bits(train: str, val: str) -> dict:
    a, b = train.encode(), (train + val).encode()
    return {"bzip2": (len(bz2.compress(b, 9)) - len(bz2.compress(a, 9))) * 8 / len(val),
            "xz": (len(lzma.compress(b, preset=9 | lzma.PRESET_EXTREME))
                   - len(lzma.compress(a, preset=9 | lzma.PRESET_EXTREME))) * 8 / len(val)}


# ---- rnnkit -----------------------------------------------------------------------------------
def rnnkit_bits(corpus: Path | None, budget: float, work: Path, kind: str | None = None) -> dict:
    """Train the quality preset (of `kind`, else the kind it chooses) for `budget` seconds;
    bits/char of the weights it ends on."""
    out = work / f"run-{time.monotonic_ns()}"
    cmd = [sys.executable, "-m", "rnnkit", "train", "--preset", "quality", "--time-budget",
           str(budget), "--json", "--out", str(out)]
    if corpus is not None:
        cmd += ["--corpus", str(corpus)]
    if kind is not None:
        cmd += ["--cell", kind]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr)
    summary = json.loads(proc.stdout.splitlines()[-1])
    config = json.loads((out / "config.json").read_text())["config"]
    network = summary.get("network_val_ppl", summary["val_ppl"])
    return {"bits": math.log2(summary["val_ppl"]), "val_ppl": summary["val_ppl"],
            "network_bits": math.log2(network), "ngram_order": summary.get("ngram", {}).get(
                "order"),
            "nats": math.log(summary["val_ppl"]), "epochs": len(proc.stdout.splitlines()) - 1,
            "best_epoch": summary.get("best_epoch"), "wall_s": time.perf_counter() - start,
            "network_nats": math.log(network), "budget": budget, "kind": config["cell"],
            "layers": config["layers"], "hidden": config["hidden"], "dropout": config["dropout"],
            "batch_size": config["batch_size"], "num_steps": config["num_steps"],
            "tokens_per_s": summary["tokens_per_s"]}


def split(text: str) -> tuple[str, str]:
    """rnnkit's split: the last 10% of the characters held out (clean none: one char a token)."""
    n_val = round(len(text) * 0.1)
    return text[:len(text) - n_val], text[len(text) - n_val:]


def evaluate(name: str, text: str, corpus: Path | None, budgets, work: Path, *,
             order=None, alphabet_size=None, kinds=(None,)) -> dict:
    """One row: the baselines on the whole held-out slice, and per budget rnnkit with the
    baselines again on exactly the characters rnnkit's evaluation scored."""
    train, val = split(text)
    kn, kn_order = kneser_ney_bits(train, val)
    oracle = oracle_bits(train, val, order, alphabet_size) if order else None
    row = {"corpus": name, "chars": len(text), "floor": None,
           "oracle": float(oracle.mean()) if oracle is not None else None,
           "kneser_ney": float(kn.mean()), "kn_order": kn_order,
           **compressor_bits(train, val), "rnnkit": {}}
    for budget in budgets:
        for kind in kinds:
            m = rnnkit_bits(corpus, budget, work, kind)
            steps = m["num_steps"] // 2 if m["kind"] == "transformer" else m["num_steps"]
            same = scored_positions(len(val), m["batch_size"], steps)
            m["kneser_ney_same"] = float(kn[same].mean())
            m["oracle_same"] = float(oracle[same].mean()) if oracle is not None else None
            row["rnnkit"][f"{budget:g} s {kind or 'chosen'}"] = m
            print(f"  {name} {budget:g} s {kind or 'chosen'}: {m}", file=sys.stderr)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="corpora to run (default: all)")
    ap.add_argument("--budget-scale", type=float, default=1.0)
    ap.add_argument("--json-out")
    ap.add_argument("--budgets", type=float, nargs="*",
                    help="seconds of training on the real corpora (default: each one's own)")
    ap.add_argument("--kinds", nargs="*", choices=("lstm", "mingru", "minlstm", "transformer"),
                    help="train each of these kinds (--cell) on the real corpora, side by side, "
                         "instead of the kind the preset chooses")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, (alphabet, size, order, succ, n, budget) in MARKOV.items():
            if args.only and name not in args.only:
                continue
            text, entropy = markov_source(alphabet[:size], size, order, succ, n)
            path = work / f"{name}.txt"
            path.write_text(text, encoding="utf-8")
            rows.append(evaluate(name, text, path, [budget * args.budget_scale], work,
                                 order=order, alphabet_size=size))
            rows[-1]["floor"] = entropy
        for name, (path, budgets) in REAL.items():
            if args.only and name not in args.only:
                continue
            if path is not None and not path.exists():
                print(f"skipping {name}: {path} not found", file=sys.stderr)
                continue
            from rnnkit.data import time_machine_text
            text = time_machine_text() if path is None else path.read_text(encoding="utf-8")
            budgets = args.budgets or budgets
            rows.append(evaluate(name, text, path, [b * args.budget_scale for b in budgets], work,
                                 kinds=args.kinds or (None,)))
    print_table(rows)
    line = json.dumps({"benchmark": "quality", "rows": rows})
    print(line)
    if args.json_out:
        Path(args.json_out).write_text(line + "\n")


def fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.3f}"


def print_table(rows: list[dict]) -> None:
    """rnnkit against the oracle and Kneser–Ney scored on the same characters (the ones its
    evaluation covers); floor, bzip2 and xz over the whole held-out slice."""
    print("| corpus | budget | rnnkit bits/char (ppl) | network alone | nats/char (network "
          "alone) | wall s | oracle | floor | Kneser–Ney (n) | bzip2 | xz | rnnkit vs oracle "
          "| vs Kneser–Ney | model |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    names = {"lstm": "LSTM", "mingru": "minGRU", "minlstm": "minLSTM",
             "transformer": "transformer"}
    for r in rows:
        for m in r["rnnkit"].values():
            oracle, kn = m["oracle_same"], m["kneser_ney_same"]
            vs = f"{2 ** (m['bits'] - oracle) - 1:+.1%} ppl" if oracle else ""
            layers = f"{m['layers']}×" if m["layers"] > 1 else ""
            print(f"| {r['corpus']} | {m['budget']:g} s | {m['bits']:.3f} ({m['val_ppl']:.2f}) "
                  f"| {m['network_bits']:.3f} | {m['nats']:.3f} ({m['network_nats']:.3f}) "
                  f"| {m['wall_s']:.0f} | {fmt(oracle)} | {fmt(r['floor'])} | {kn:.3f} "
                  f"({r['kn_order'] + 1}) | {r['bzip2']:.3f} | {r['xz']:.3f} | {vs} "
                  f"| {m['bits'] - kn:+.4f} bits "
                  f"| {names[m['kind']]} {layers}{m['hidden']} dropout {m['dropout']}, window "
                  f"{m['num_steps']}, best epoch {m['best_epoch']} of {m['epochs']}"
                  + (f", {m['ngram_order'] + 1}-gram mixed in" if m['ngram_order'] else "")
                  + " |")


if __name__ == "__main__":
    main()
