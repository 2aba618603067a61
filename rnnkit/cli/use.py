"""`rnnkit generate` and `rnnkit eval`: a trained run (`Run.open`) writes text or is scored."""
from __future__ import annotations

import json
import math
import sys

import numpy as np

from ..copies import DamagedIndex
from ..copies import describe as describe_copies
from ..data import SPLITS
from ..errors import RnnkitError, UsageError
from ..sampling import Limits
from .args import check_text, choice, choices, path, weights_flag

# what one `rnnkit generate` may ask for: 128 MB of ids at most
LIMITS = Limits(num_chars=1_000_000, num_samples=4096, beam=1024, generated=1 << 24)


def add_parsers(sub) -> None:
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
    s.add_argument("--num-samples", type=int, default=1,
                   help="samples, made in one batch (with --beam: the K best, K <= N)")
    s.add_argument("--beam", type=int, help="beam search with N continuations, e.g. 8")
    s.add_argument("--length-penalty", type=float, default=0.0,
                   help="with --beam: rank by log P / length^alpha, e.g. 0.75 (default: 0)")
    s.add_argument("--stop-at", help="with --beam: a continuation ends at this character")
    s.add_argument("--copy-min", type=int, help="report copies of the training text of at "
                   "least N tokens (default: 20 characters or 6 words)")
    s.add_argument("--no-copy-check", dest="copy_check", action="store_false",
                   help="do not compare the samples with the training text")
    s.add_argument("--json", action="store_true",
                   help="one JSON object per sample on stdout: text, copies, the settings")
    weights_flag(s)
    s.set_defaults(func=cmd_generate)

    e = sub.add_parser("eval", help="perplexity and bits per character of a trained run",
                       epilog="example: rnnkit eval runs/latest --corpus other.txt")
    e.add_argument("run_dir", help="a directory made by 'rnnkit train'")
    e.add_argument("--corpus", type=path,
                   help="text to score (default: the run's validation slice)")
    e.add_argument("--split", default="val", type=choice(SPLITS), metavar=choices(SPLITS),
                   help="which slice of the run's corpus to score (default: val)")
    e.add_argument("--samples", type=int, metavar="K",
                   help="instead: how much the model recites — K samples (temperature 1, seed "
                        "0) compared with the training text")
    e.add_argument("--num-chars", type=int, default=200,
                   help="with --samples: tokens per sample (default: 200)")
    e.add_argument("--json", action="store_true",
                   help="one JSON object on stdout: the figures and the settings used")
    weights_flag(e)
    e.set_defaults(func=cmd_eval)


def _threads_for_rows(rows: int) -> None:
    """Small steps (one stream, a beam) run on one thread: see perf.threads_for."""
    import torch

    from ..perf import threads_for
    torch.set_num_threads(threads_for(rows))


def _open(args):
    from ..run import Run
    return Run.open(args.run_dir, weights=args.weights, ngram=args.ngram)


def cmd_generate(args) -> int:
    from ..sampling import check_sampling
    if args.prefix is not None:
        check_text(args.prefix, "--prefix")
    if args.stop_at is not None:
        check_text(args.stop_at, "--stop-at")
    if args.copy_min is not None and not 1 <= args.copy_min <= 1 << 20:
        raise UsageError("--copy-min must be between 1 and 1,048,576 tokens")
    try:
        check_sampling(vars(args), LIMITS, lambda name: "--" + name.replace("_", "-"))
    except ValueError as e:
        raise UsageError(str(e)) from None
    _threads_for_rows(args.beam or args.num_samples)
    run = _open(args)
    prefix = run.config.prefix if args.prefix is None else args.prefix
    ids, unknown = run.encode(prefix)
    if not ids:
        raise UsageError("--prefix holds no token")
    if unknown:
        print(f"rnnkit: warning: {len(unknown)} prefix token(s) not in the vocabulary "
              f"({''.join(sorted(set(unknown)))[:40]!r}) read as <unk>", file=sys.stderr)
    try:
        samples = run.generate(prefix, args.num_chars, num_samples=args.num_samples,
                               temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                               seed=args.seed, beam=args.beam,
                               length_penalty=args.length_penalty, stop_at=args.stop_at)
    except ValueError:                  # the stop token is not one token of the vocabulary
        raise UsageError("--stop-at must be one token of the run's vocabulary") from None
    check = args.copy_check and _copy_index(run)
    for sample in samples:
        report = run.copies(sample, args.copy_min) if check else None
        if args.json:
            settings = {**_settings(args), "prefix": prefix,
                        "copy_min": report.copy_min if report else args.copy_min}
            print(json.dumps({"text": sample.text, "log_prob": sample.log_prob,
                              "copies": report and report.to_dict(), "settings": settings},
                             ensure_ascii=False), flush=True)
            continue
        logp = sample.log_prob
        print(sample.text if logp is None or args.num_samples == 1 else
              f"{logp:.4f}\t{sample.text}", flush=True)
        if report is not None:
            span = run.decode(sample.ids[report.sample_at:report.sample_at + report.longest])
            print(describe_copies(report, span, run.config.token), file=sys.stderr, flush=True)
    return 0


def _copy_index(run) -> bool:
    """Whether the samples can be compared with the training text: its index is built (on
    first use) or read; a training text that can no longer be read only skips the check."""
    try:
        run.copy_index
    except DamagedIndex:                   # refused, as any damaged run file
        raise
    except RnnkitError as e:
        print(f"rnnkit: note: not checking the samples for copies ({e})", file=sys.stderr)
        return False
    return True


def _settings(args) -> dict:
    keys = ("prefix", "num_chars", "num_samples", "temperature", "top_k", "top_p", "seed",
            "beam", "length_penalty", "stop_at", "weights", "ngram", "copy_min")
    return {k: getattr(args, k) for k in keys}


def cmd_eval(args) -> int:
    if args.samples is not None:
        return recitation(args)
    run = _open(args)
    if args.corpus:
        from ..data import load_corpus
        ids, _ = load_corpus(args.corpus, run.config.clean, run.config.token, vocab=run.vocab)
        where = args.corpus
    else:
        ids, where = run.slices[args.split], f"the {args.split} slice"
        if len(ids) == 0:
            fraction = {"val": "--val-fraction", "test": "--test-fraction"}.get(args.split)
            raise UsageError(f"the run has no {args.split} slice" + (
                f" (it trained with {fraction} 0); pick another --split" if fraction else ""))
    unk = int(np.count_nonzero(ids == run.vocab.unk))
    if unk:
        print(f"rnnkit: warning: {unk} token(s) are not in the run's vocabulary and score as "
              "<unk>", file=sys.stderr)
    try:
        loss, tokens = run.evaluate(args.split, ids=ids if args.corpus else None)
    except ValueError as e:
        raise RnnkitError(f"{where}: {e}; give a longer text") from None
    mixed = run.model.mixture
    steps = run.model.scoring_steps(run.config.num_steps)
    windows = None if steps == run.config.num_steps else {
        "window": steps, "context": run.config.num_steps, "min_context": steps}
    if args.json:
        print(json.dumps({
            "perplexity": math.exp(loss / tokens), "nats_per_token": loss / tokens,
            "bits_per_token": loss / tokens / math.log(2), "tokens": tokens,
            "unknown_tokens": unk, "token": run.config.token,
            "ngram": mixed["n"] if mixed else None, "sliding_windows": windows,
            "settings": {"run_dir": args.run_dir, "corpus": args.corpus,
                         "split": None if args.corpus else args.split,
                         "weights": args.weights or run.config.end_on, "ngram": args.ngram}},
                         ensure_ascii=False))
        return 0
    print(f"perplexity {math.exp(loss / tokens):.3f}, {loss / tokens / math.log(2):.4f} bits "
          f"per {run.config.token} on {where} ({tokens:,} tokens)" + (
              f"; the network with its {mixed['n']}-gram model mixed in (--no-ngram: the "
              "network alone)" if mixed else ""))
    if windows:
        print(f"  read in sliding windows: {steps} new tokens at a time after the {steps} before "
              f"them (context {run.config.num_steps}), so every token but the text's first "
              f"{steps} is scored once, with at least {steps} tokens of context")
    return 0


def recitation(args) -> int:
    """`rnnkit eval RUN --samples K`: the distribution of the longest copy and of the copied
    share over K sampled texts, in one line that compares across runs."""
    if not 1 <= args.samples <= 4096 or not 1 <= args.num_chars <= 100_000:
        raise UsageError("--samples must be between 1 and 4,096 and --num-chars between 1 and "
                         "100,000")
    _threads_for_rows(args.samples)
    run = _open(args)
    run.copy_index                          # built (or read and checked) before sampling
    reports = [run.copies(s) for s in run.generate(run.config.prefix, args.num_chars,
                                                   num_samples=args.samples, temperature=1.0,
                                                   seed=0)]
    longest = np.array([r.longest for r in reports])
    share = np.array([r.copied_share for r in reports])
    unit = "chars" if run.config.token == "char" else "words"
    if args.json:
        print(json.dumps({
            "samples": len(reports), "longest": {"median": float(np.median(longest)),
                                                 "p90": float(np.percentile(longest, 90)),
                                                 "max": int(longest.max())},
            "copied_share": {"mean": float(share.mean()), "max": float(share.max())},
            "copy_min": reports[0].copy_min, "unit": unit,
            "settings": {"run_dir": args.run_dir, "samples": args.samples,
                         "num_chars": args.num_chars, "temperature": 1.0, "seed": 0,
                         "weights": args.weights or run.config.end_on, "ngram": args.ngram}}))
        return 0
    print(f"copies in {len(reports)} samples of {args.num_chars} {unit} (temperature 1): longest "
          f"median {np.median(longest):.0f}, p90 {np.percentile(longest, 90):.0f}, max "
          f"{longest.max()} {unit}; copied share mean {100 * share.mean():.1f}%, max "
          f"{100 * share.max():.1f}% (spans of {reports[0].copy_min}+ {unit})")
    return 0
