"""What people would pick instead, on the same machine in the same run: nanoGPT's own `train.py`
with its README's CPU recipe against `rnnkit train --preset quality`, the same wall time each,
both scored by rnnkit's evaluation on the same held-out text (the last 10% of the corpus, read in
sliding windows: every token with at least half a context before it).

nanoGPT is not part of rnnkit: pass a checkout of karpathy/nanoGPT. Its iterations are sized so
that its learning-rate schedule ends in the budget (runs of 30 and 280 iterations time them); its
checkpoint (the best evaluation it saved) is loaded into rnnkit's `Transformer`, which has its
shape. Prints a table and one JSON line.

    python benchmarks/nanogpt.py --nanogpt ~/src/nanoGPT --budget 300
"""
from __future__ import annotations

import argparse
import json
import math
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rnnkit.train import evaluate
from rnnkit.transformer import Transformer

ROOT = Path(__file__).resolve().parent.parent
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
# the README's CPU recipe ("baby GPT" on a MacBook), iterations set below
RECIPE = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False",
          "--eval_iters=20", "--log_interval=1000", "--block_size=64", "--batch_size=12",
          "--n_layer=4", "--n_head=4", "--n_embd=128", "--dropout=0.0"]


def prepare(checkout: Path, text: str, work: Path) -> tuple[Path, dict]:
    """A copy of the checkout with the corpus as nanoGPT's prepare.py writes it (every
    character, sorted vocabulary, first 90% train, the rest validation)."""
    repo = work / "nanoGPT"
    shutil.copytree(checkout, repo, ignore=shutil.ignore_patterns(".git", "out*"))
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    n = int(len(ids) * 0.9)
    data = repo / "data" / "shakespeare_char"
    data.mkdir(parents=True, exist_ok=True)
    ids[:n].tofile(data / "train.bin")
    ids[n:].tofile(data / "val.bin")
    meta = {"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}
    with open(data / "meta.pkl", "wb") as f:
        pickle.dump(meta, f)
    return repo, {"ids": ids.astype(np.int64), "split": n, "vocab": len(chars)}


def run_nanogpt(repo: Path, iters: int, out: str) -> float:
    """Wall seconds of `train.py` for `iters` iterations (its schedule decays over them)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "train.py", *RECIPE, f"--max_iters={iters}",
                           f"--lr_decay_iters={iters}", f"--out_dir={out}"], cwd=repo,
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"nanoGPT failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start


def load_into_transformer(path: Path) -> Transformer:
    """nanoGPT's checkpoint as rnnkit's Transformer (same blocks; nanoGPT's recipe has no
    biases, so rnnkit's stay zero)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    args = ckpt["model_args"]
    model = Transformer(args["vocab_size"], args["n_embd"], context=args["block_size"],
                        num_layers=args["n_layer"], heads=args["n_head"])
    names = {"transformer.wte": "wte", "transformer.wpe": "wpe", "transformer.ln_f": "ln_f",
             "ln_1": "ln1", "ln_2": "ln2", "attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj",
             "mlp.c_fc": "up", "mlp.c_proj": "down", "transformer.h": "blocks"}
    state = {}
    for key, value in ckpt["model"].items():
        key = key.removeprefix("_orig_mod.")
        for theirs, ours in names.items():
            key = key.replace(theirs, ours)
        state[key] = value
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.endswith("bias") for k in missing):
        raise SystemExit(f"nanoGPT's checkpoint does not fit: {missing} {unexpected}")
    for k in missing:
        model.get_parameter(k).data.zero_()
    return model.eval()


def run_rnnkit(corpus: Path, budget: float, work: Path, cell: str | None) -> dict:
    """`rnnkit train --preset quality` for `budget` seconds of training; its figures."""
    out = work / f"rnnkit-{cell or 'chosen'}"
    cmd = [sys.executable, "-m", "rnnkit", "train", "--preset", "quality", "--corpus",
           str(corpus), "--time-budget", str(budget), "--json", "--out", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(cmd + (["--cell", cell] if cell else []), capture_output=True,
                          text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(proc.stderr)
    summary = json.loads(proc.stdout.splitlines()[-1])
    config = json.loads((out / "config.json").read_text())["config"]
    return {"wall_s": wall, "network_nats": math.log(summary.get("network_val_ppl",
                                                                  summary["val_ppl"])),
            "mixture_nats": math.log(summary["val_ppl"]), "kind": config["cell"],
            "hidden": config["hidden"], "layers": config["layers"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nanogpt", type=Path, required=True, help="a checkout of karpathy/nanoGPT")
    ap.add_argument("--corpus", type=Path, default=SHAKESPEARE)
    ap.add_argument("--budget", type=float, default=300, help="wall seconds for each tool")
    ap.add_argument("--overhead", type=float, default=40,
                    help="seconds of rnnkit's wall time outside training (start, speed measure, "
                         "evaluations, n-gram fit: 40 measured at 300 s on Tiny Shakespeare)")
    ap.add_argument("--kinds", nargs="*", default=[],
                    help="rnnkit kinds to run (--cell); default: the one the preset chooses")
    args = ap.parse_args()
    text = args.corpus.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        repo, data = prepare(args.nanogpt, text, work)
        # 30 iterations, then 280: the difference is 250 iterations and the evaluation that
        # nanoGPT runs every 250 (eval_interval), so the sizing counts both
        probe = run_nanogpt(repo, 30, "out-probe")
        per_iter = (run_nanogpt(repo, 280, "out-probe2") - probe) / 250
        start_cost = probe - 30 * per_iter
        iters = max(50, int((args.budget - start_cost) / per_iter))
        wall = run_nanogpt(repo, iters, "out-run")
        model = load_into_transformer(repo / "out-run" / "ckpt.pt")
        ids, n = data["ids"], data["split"]
        loss, tokens = evaluate(model, ids[n:], batch_size=32, num_steps=model.context,
                                before=ids[:n])
        rows = [{"tool": "nanoGPT train.py (README CPU recipe)", "wall_s": wall,
                 "network_nats": loss / tokens, "iters": iters, "tokens": tokens}]
        for cell in args.kinds or [None]:
            r = run_rnnkit(args.corpus, args.budget - args.overhead, work, cell)
            rows.append({"tool": f"rnnkit --preset quality ({r['kind']}"
                                 f"{' ' + str(r['layers']) + '×' if r['layers'] > 1 else '-'}"
                                 f"{r['hidden']})", **r})
    base = rows[0]["network_nats"]
    print("| tool | wall s | validation nats/char (network) | vs nanoGPT | with n-gram mixed in |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        mix = f"{r['mixture_nats']:.3f}" if "mixture_nats" in r else ""
        print(f"| {r['tool']} | {r['wall_s']:.0f} | {r['network_nats']:.3f} | "
              f"{r['network_nats'] / base - 1:+.1%} | {mix} |")
    print(json.dumps({"benchmark": "nanogpt", "budget": args.budget, "rows": rows}))


if __name__ == "__main__":
    main()
