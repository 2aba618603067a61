"""The `rnnkit` command: train | generate | eval | vocab | prepare | bench. The only module that reads argv."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
import traceback

from .errors import Interrupted, RnnkitError, UsageError

MAX_CHARS = 1_000_000


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one `rnnkit: error:` line and exit status 2."""

    def error(self, message: str):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    from .config import PRESETS, TrainConfig
    d = TrainConfig()
    p = _Parser(prog="rnnkit", description="Character-level RNN language models, from the "
                "Dive into Deep Learning chapter to real training runs.",
                epilog="example: rnnkit train --epochs 50 --out runs/tm && "
                       "rnnkit generate runs/tm --prefix 'time traveller'")
    p.add_argument("--debug", action="store_true", help="show a traceback on errors")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a model (defaults: the chapter's run)",
                       epilog="example: rnnkit train --corpus my.txt --clean none --out runs/my")
    # config flags default to SUPPRESS, so a --preset fills only what the user did not give
    S = argparse.SUPPRESS

    def opt(group, flag, kind=str, help=""):
        name = flag[2:].replace("-", "_")
        group.add_argument(flag, type=kind, default=S,
                           help=f"{help} (default: {getattr(d, name)})".strip())

    g = t.add_argument_group("data")
    opt(g, "--corpus", help="UTF-8 text file; None = bundled The Time Machine")
    opt(g, "--clean", help="d2l | lower | none")
    opt(g, "--token", help="char | word")
    opt(g, "--min-freq", int, "rarer tokens become <unk>, e.g. 3")
    opt(g, "--max-tokens", int, "training tokens, -1 = all")
    opt(g, "--val-fraction", float, "held-out validation share, e.g. 0.1")
    opt(g, "--test-fraction", float, "held-out test share at the very end, e.g. 0.05")
    g = t.add_argument_group("model")
    opt(g, "--cell", help="rnn | gru | lstm")
    opt(g, "--impl", help="bptt | autograd | torch")
    opt(g, "--hidden", int, "hidden units, e.g. 512")
    opt(g, "--precision", help="fp32 | bf16 | fp16 (fp16: CUDA, with a gradient scaler)")
    opt(g, "--layers", int, "stacked layers (--impl torch)")
    opt(g, "--dropout", float, "dropout, e.g. 0.25 (--impl torch)")
    opt(g, "--embed", int, "learned embedding size, 0 = one-hot (--impl torch)")
    g.add_argument("--tie", action="store_true", default=S,
                   help="tie embedding and output weights (needs --embed == --hidden)")
    g = t.add_argument_group("optimization")
    g.add_argument("--preset", default="d2l", choices=sorted(PRESETS),
                   help="bundle of settings: d2l (the chapter) or quality (default: d2l)")
    opt(g, "--optimizer", help="sgd | adam | adamw")
    opt(g, "--lr", float, "peak learning rate")
    opt(g, "--weight-decay", float, "e.g. 0.01")
    opt(g, "--warmup", int, "steps of linear warm-up")
    opt(g, "--schedule", help="constant | cosine | plateau")
    opt(g, "--clip", float, "gradient global-norm bound")
    opt(g, "--epochs", int, "passes over the training slice")
    opt(g, "--patience", int, "early stop after N epochs without a better val loss; 0 = off")
    opt(g, "--time-budget", float, "stop after N seconds of training; 0 = none")
    opt(g, "--batch-size", int, "rows per minibatch")
    opt(g, "--num-steps", int, "time steps per row")
    opt(g, "--sampling", help="sequential | random")
    opt(g, "--seed", int, "seed of initialisation and batch order")
    g = t.add_argument_group("system and output")
    opt(g, "--device", help="cpu | cuda | cuda:N | auto")
    g.add_argument("--out", help="run directory (default: runs/latest)")
    g.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR (or in --out) exactly where it stopped")
    g.add_argument("--force", action="store_true", help="replace the run in --out")
    g.add_argument("--checkpoint-every", type=float, default=300.0,
                   help="seconds between mid-epoch checkpoints (default: 300)")
    opt(g, "--prefix", help="prefix of the samples printed")
    opt(g, "--sample-every", int, "print a sample every N epochs, 0 = never")
    g.add_argument("--json", action="store_true", help="JSON lines on stdout, nothing else")
    g.add_argument("--nproc", type=int, default=1,
                   help="train with N processes on this machine (torchrun; default: 1)")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("generate", help="print a prefix and what the model writes after it",
                       epilog="example: rnnkit generate runs/latest --prefix 'the time' "
                              "--num-chars 200 --temperature 0.8 --seed 1")
    s.add_argument("run_dir", help="a directory made by 'rnnkit train'")
    s.add_argument("--prefix", help="text to warm up on (default: the run's prefix)")
    s.add_argument("--num-chars", type=int, default=50, help="tokens to generate (default: 50)")
    s.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    s.add_argument("--top-k", type=int, help="sample among the k likeliest, e.g. 5")
    s.add_argument("--top-p", type=float, help="nucleus sampling mass, e.g. 0.9")
    s.add_argument("--seed", type=int, help="seed for sampling")
    s.add_argument("--num-samples", type=int, default=1, help="samples, made in one batch")
    s.add_argument("--weights", default="model.safetensors", help="or best.safetensors")
    s.set_defaults(func=cmd_generate)

    e = sub.add_parser("eval", help="perplexity and bits per character of a trained run",
                       epilog="example: rnnkit eval runs/latest --corpus other.txt")
    e.add_argument("run_dir", help="a directory made by 'rnnkit train'")
    e.add_argument("--corpus", help="text to score (default: the run's validation slice)")
    e.add_argument("--split", default="val", choices=["train", "val", "test"],
                   help="which slice of the run's corpus to score (default: val)")
    e.add_argument("--weights", default="model.safetensors", help="or best.safetensors")
    e.set_defaults(func=cmd_eval)

    v = sub.add_parser("vocab", help="print the token frequency table of a corpus")
    v.add_argument("--corpus", help="UTF-8 text file (default: The Time Machine)")
    v.add_argument("--clean", default="d2l", help="d2l | lower | none")
    v.add_argument("--token", default="char", help="char | word")
    v.add_argument("--min-freq", type=int, default=0)
    v.set_defaults(func=cmd_vocab)

    r = sub.add_parser("prepare", help="encode and cache a corpus ahead of training",
                       epilog="example: rnnkit prepare --corpus enwik8.txt --clean none")
    r.add_argument("--corpus", required=True, help="UTF-8 text file")
    r.add_argument("--clean", default="d2l", help="d2l | lower | none (default: d2l)")
    r.add_argument("--token", default="char", help="char | word (default: char)")
    r.add_argument("--min-freq", type=int, default=0)
    r.set_defaults(func=cmd_prepare)

    b = sub.add_parser("bench", help="side-by-side speed table (see benchmarks/README)")
    b.add_argument("--quick", action="store_true", help="finish in under a minute")
    b.add_argument("--json-out", help="also write the JSON result to this file")
    b.set_defaults(func=cmd_bench)
    return p


def _launch(nproc: int, argv: list[str]) -> int:
    """Re-run this command under torchrun with `nproc` processes on this machine."""
    import subprocess
    rest, skip = [], False
    for a in argv:                       # drop --nproc N / --nproc=N
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.call([sys.executable, "-m", "torch.distributed.run", "--standalone",
                            f"--nproc_per_node={nproc}", "-m", "rnnkit", *rest], env=env)


def cmd_train(args) -> int:
    import dataclasses
    if args.nproc < 1:
        raise UsageError("--nproc must be 1 or more")
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _launch(args.nproc, args.argv)
    from .config import PRESETS, TrainConfig
    from .perf import keep_freed_memory
    from .run import train_run
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in fields}
    if given.get("prefix", None) == "":
        raise UsageError("--prefix must not be empty")
    config = TrainConfig(**{**PRESETS[args.preset], **given}).validate()
    if args.resume and args.force:
        raise UsageError("--resume and --force contradict each other; pick one")
    out = args.out or "runs/latest"
    if isinstance(args.resume, str):
        if args.out is not None and Path(args.out) != Path(args.resume):
            raise UsageError(f"--resume {args.resume} and --out {args.out} name different runs; "
                             "give one of them")
        out = args.resume
    if not args.checkpoint_every > 0:
        raise UsageError("--checkpoint-every must be a positive number of seconds")
    keep_freed_memory()
    train_run(config, out, resume=bool(args.resume), force=args.force, json_lines=args.json,
              checkpoint_every=args.checkpoint_every, resume_epochs=given.get("epochs"))
    return 0


def _check_sampling(args) -> None:
    if args.prefix is not None and args.prefix == "":
        raise UsageError("--prefix must not be empty")
    if not 0 <= args.num_chars <= MAX_CHARS:
        raise UsageError(f"--num-chars must be between 0 and {MAX_CHARS:,}")
    if not (args.temperature >= 0 and math.isfinite(args.temperature)):
        raise UsageError("--temperature must be 0 (greedy) or more")
    if args.top_k is not None and args.top_k < 1:
        raise UsageError("--top-k must be 1 or more")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UsageError("--top-p must be in (0, 1]")
    if not 1 <= args.num_samples <= 4096:
        raise UsageError("--num-samples must be between 1 and 4096")


def cmd_generate(args) -> int:
    from .checkpoint import load_run
    from .generate import generate_ids, prefix_ids
    _check_sampling(args)
    model, vocab, config = load_run(args.run_dir, weights=args.weights)
    prefix = config.prefix if args.prefix is None else args.prefix
    ids, unknown = prefix_ids(vocab, prefix, config.token)
    if not ids:
        raise UsageError("--prefix holds no token")
    if unknown:
        print(f"rnnkit: warning: {len(unknown)} prefix token(s) not in the vocabulary "
              f"({''.join(sorted(set(unknown)))[:40]!r}) read as <unk>", file=sys.stderr)
    out = generate_ids(model, ids, args.num_chars, num_samples=args.num_samples,
                       temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                       seed=args.seed)
    sep = "" if config.token == "char" else " "
    for row in out.tolist():
        print(prefix + ("" if sep == "" or not row else sep) + sep.join(vocab.to_tokens(row)))
    return 0


def cmd_eval(args) -> int:
    import numpy as np
    from .checkpoint import load_run
    from .data import load_corpus, split_corpus
    from .train import evaluate
    model, vocab, config = load_run(args.run_dir, weights=args.weights)
    if args.corpus:
        ids, _ = load_corpus(args.corpus, config.clean, config.token, vocab=vocab)
        where = args.corpus
    else:
        ids, _ = load_corpus(config.corpus, config.clean, config.token, vocab=vocab)
        slices = split_corpus(ids, config.val_fraction, config.max_tokens, config.test_fraction)
        ids = slices[("train", "val", "test").index(args.split)]
        where = f"the {args.split} slice"
    unk = int(np.count_nonzero(ids == vocab.unk))
    if unk:
        print(f"rnnkit: warning: {unk} token(s) are not in the run's vocabulary and score as "
              "<unk>", file=sys.stderr)
    try:
        loss, tokens = evaluate(model, ids, batch_size=config.batch_size,
                                num_steps=config.num_steps)
    except ValueError as e:
        raise RnnkitError(f"{where}: {e}; give a longer text") from None
    unit = "char" if config.token == "char" else "word"
    print(f"perplexity {math.exp(loss / tokens):.3f}, {loss / tokens / math.log(2):.4f} bits "
          f"per {unit} on {where} ({tokens:,} tokens)")
    return 0


def cmd_vocab(args) -> int:
    from .data import load_corpus
    _check_corpus_settings(args)
    ids, vocab = load_corpus(args.corpus, args.clean, args.token, args.min_freq)
    print(f"# {len(ids):,} tokens, vocabulary of {len(vocab)} (with <unk>)")
    for i, tok in enumerate(vocab.idx_to_token):
        count = dict(vocab.token_freqs).get(tok, 0)
        print(f"{i}\t{json.dumps(tok, ensure_ascii=False)}\t{count}")
    return 0


def _check_corpus_settings(args) -> None:
    if args.min_freq < 0:
        raise UsageError("--min-freq must be 0 or more")
    for name, allowed in (("clean", ("d2l", "lower", "none")), ("token", ("char", "word"))):
        if getattr(args, name) not in allowed:
            raise UsageError(f"--{name} must be one of {', '.join(allowed)}")


def cmd_prepare(args) -> int:
    import time
    from .encode import count_characters, prepare
    _check_corpus_settings(args)
    start = time.perf_counter()
    ids, vocab, path = prepare(args.corpus, args.clean, args.token, args.min_freq)
    seconds = time.perf_counter() - start
    print(f"corpus      {args.corpus} ({os.path.getsize(args.corpus):,} bytes, "
          f"{count_characters(Path(args.corpus)):,} characters)")
    print(f"tokens      {len(ids):,} ({args.token}, --clean {args.clean})")
    print(f"vocabulary  {len(vocab):,} (with <unk>)")
    print(f"cache       {path}")
    print(f"time        {seconds:.2f} s")
    return 0


def cmd_bench(args) -> int:
    from .bench import main as bench_main
    return bench_main(quick=args.quick, json_out=args.json_out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        args.argv = argv
        return args.func(args)
    except RnnkitError as e:
        if debug:
            traceback.print_exc()
        print(f"rnnkit: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    except Interrupted as e:
        if os.environ.get("RANK", "0") != "0":   # under torchrun, rank 0 speaks for all
            return e.code
        print(f"rnnkit: error: training stopped at {e.where}; checkpoint saved — continue with "
              f"'rnnkit train --resume --out {e.out}'", file=sys.stderr)
        return e.code
    except BrokenPipeError:  # e.g. `rnnkit vocab | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("rnnkit: error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 — a last resort: one line, not a traceback
        if debug:
            traceback.print_exc()
        print(f"rnnkit: error: unexpected {type(e).__name__}: {e} (rerun with --debug for "
              "details)", file=sys.stderr)
        return 1
