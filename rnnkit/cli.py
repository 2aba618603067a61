"""The `rnnkit` command: train | generate | eval | vocab | bench. The only module that reads argv."""
from __future__ import annotations

import argparse
import json
import math
import sys
import traceback

from .errors import Interrupted, RnnkitError, UsageError

MAX_CHARS = 1_000_000


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one `rnnkit: error:` line and exit status 2."""

    def error(self, message: str):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    from .config import TrainConfig
    d = TrainConfig()
    p = _Parser(prog="rnnkit", description="Character-level RNN language models, from the "
                "Dive into Deep Learning chapter to real training runs.",
                epilog="example: rnnkit train --epochs 50 --out runs/tm && "
                       "rnnkit generate runs/tm --prefix 'time traveller'")
    p.add_argument("--debug", action="store_true", help="show a traceback on errors")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a model (defaults: the chapter's run)",
                       epilog="example: rnnkit train --corpus my.txt --clean none --out runs/my")
    g = t.add_argument_group("data")
    g.add_argument("--corpus", help="UTF-8 text file (default: bundled The Time Machine)")
    g.add_argument("--clean", default=d.clean, help="d2l | lower | none (default: d2l)")
    g.add_argument("--token", default=d.token, help="char | word (default: char)")
    g.add_argument("--min-freq", type=int, default=d.min_freq, help="e.g. 3 (default: 0)")
    g.add_argument("--max-tokens", type=int, default=d.max_tokens,
                   help="training tokens, -1 = all (default: 10000, as the book)")
    g.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="held-out tail of the corpus (default: 0.1)")
    g = t.add_argument_group("model")
    g.add_argument("--cell", default=d.cell, help="rnn | gru | lstm (default: rnn)")
    g.add_argument("--impl", default=d.impl, help="bptt | autograd | torch (default: bptt)")
    g.add_argument("--hidden", type=int, default=d.hidden, help="hidden units (default: 512)")
    g.add_argument("--precision", default=d.precision, help="fp32 | bf16 (default: fp32)")
    g = t.add_argument_group("optimization")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="(default: 32)")
    g.add_argument("--num-steps", type=int, default=d.num_steps, help="(default: 35)")
    g.add_argument("--lr", type=float, default=d.lr, help="SGD learning rate (default: 1)")
    g.add_argument("--clip", type=float, default=d.clip, help="gradient norm (default: 1)")
    g.add_argument("--epochs", type=int, default=d.epochs, help="(default: 500)")
    g.add_argument("--sampling", default=d.sampling, help="sequential | random")
    g.add_argument("--seed", type=int, default=d.seed, help="(default: 0)")
    g = t.add_argument_group("system and output")
    g.add_argument("--device", default=d.device, help="cpu | cuda | cuda:N | auto")
    g.add_argument("--out", default="runs/latest", help="run directory (default: runs/latest)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out")
    g.add_argument("--force", action="store_true", help="replace the run in --out")
    g.add_argument("--checkpoint-every", type=float, default=300.0,
                   help="seconds between mid-epoch checkpoints (default: 300)")
    g.add_argument("--prefix", default=d.prefix, help="prefix of the samples printed")
    g.add_argument("--sample-every", type=int, default=d.sample_every,
                   help="print a sample every N epochs (default: 10)")
    g.add_argument("--json", action="store_true", help="JSON lines on stdout, nothing else")
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
    e.add_argument("--weights", default="model.safetensors", help="or best.safetensors")
    e.set_defaults(func=cmd_eval)

    v = sub.add_parser("vocab", help="print the token frequency table of a corpus")
    v.add_argument("--corpus", help="UTF-8 text file (default: The Time Machine)")
    v.add_argument("--clean", default="d2l", help="d2l | lower | none")
    v.add_argument("--token", default="char", help="char | word")
    v.add_argument("--min-freq", type=int, default=0)
    v.set_defaults(func=cmd_vocab)

    b = sub.add_parser("bench", help="side-by-side speed table (see benchmarks/README)")
    b.add_argument("--quick", action="store_true", help="finish in under a minute")
    b.add_argument("--json-out", help="also write the JSON result to this file")
    b.set_defaults(func=cmd_bench)
    return p


def cmd_train(args) -> int:
    from .config import TrainConfig
    from .perf import keep_freed_memory
    from .runner import train_run
    config = TrainConfig(corpus=args.corpus, clean=args.clean, token=args.token,
                         min_freq=args.min_freq, max_tokens=args.max_tokens,
                         val_fraction=args.val_fraction, cell=args.cell, impl=args.impl,
                         hidden=args.hidden, precision=args.precision,
                         batch_size=args.batch_size, num_steps=args.num_steps, lr=args.lr,
                         clip=args.clip, epochs=args.epochs, sampling=args.sampling,
                         seed=args.seed, device=args.device, prefix=args.prefix,
                         sample_every=args.sample_every).validate()
    if not args.prefix:
        raise UsageError("--prefix must not be empty")
    if args.resume and args.force:
        raise UsageError("--resume and --force contradict each other; pick one")
    if not args.checkpoint_every > 0:
        raise UsageError("--checkpoint-every must be a positive number of seconds")
    keep_freed_memory()
    train_run(config, args.out, resume=args.resume, force=args.force, json_lines=args.json,
              checkpoint_every=args.checkpoint_every)
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
        ids = split_corpus(ids, config.val_fraction, config.max_tokens)[1]
        where = "the validation slice"
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
    if args.min_freq < 0:
        raise UsageError("--min-freq must be 0 or more")
    for name, allowed in (("clean", ("d2l", "lower", "none")), ("token", ("char", "word"))):
        if getattr(args, name) not in allowed:
            raise UsageError(f"--{name} must be one of {', '.join(allowed)}")
    ids, vocab = load_corpus(args.corpus, args.clean, args.token, args.min_freq)
    print(f"# {len(ids):,} tokens, vocabulary of {len(vocab)} (with <unk>)")
    for i, tok in enumerate(vocab.idx_to_token):
        count = dict(vocab.token_freqs).get(tok, 0)
        print(f"{i}\t{json.dumps(tok, ensure_ascii=False)}\t{count}")
    return 0


def cmd_bench(args) -> int:
    from .bench import main as bench_main
    return bench_main(quick=args.quick, json_out=args.json_out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except RnnkitError as e:
        if debug:
            traceback.print_exc()
        print(f"rnnkit: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    except Interrupted as e:
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
