"""The `rnnkit` command: train | generate | eval | vocab | prepare | export | serve | bench.
The only module that reads argv; each subcommand checks its settings before it reads,
allocates or writes anything.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import traceback
from pathlib import Path

from .errors import Interrupted, RnnkitError, UsageError

MAX_CHARS = 1_000_000             # tokens one generated sample may hold
MAX_SAMPLES = 4096                # samples one generate call may make
MAX_GENERATED = 1 << 24           # samples x tokens: bounds the output's memory (128 MB)
CLEAN_MODES, TOKEN_MODES = ("d2l", "lower", "none"), ("char", "word")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one `rnnkit: error:` line and exit status 2."""

    def error(self, message: str):
        choice = re.match(r"argument ([-\w/]+): invalid choice: (.*) \(choose from (.*)\)$",
                          message)
        if choice:   # in rnnkit's words: "--cell must be one of rnn, gru, lstm, not 'x'"
            flag, value, allowed = choice.groups()
            message = f"{flag.split('/')[0]} must be one of {allowed.replace(chr(39), '')}, " \
                      f"not {value}"
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="rnnkit", description="Character-level RNN language models, from the "
                "Dive into Deep Learning chapter to real training runs.",
                epilog="example: rnnkit train --epochs 50 --out runs/tm && "
                       "rnnkit generate runs/tm --prefix 'time traveller'")
    p.add_argument("--debug", action="store_true", help="show a traceback on errors")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train(sub)
    _add_generate(sub)
    _add_eval(sub)
    _add_vocab(sub)
    _add_prepare(sub)
    _add_export(sub)
    _add_serve(sub)
    b = sub.add_parser("bench", help="side-by-side speed table (README.md, section Speed)")
    b.add_argument("--quick", action="store_true", help="finish in under a minute")
    b.add_argument("--json-out", help="also write the JSON result to this file")
    b.set_defaults(func=cmd_bench)
    return p


def _add_train(sub) -> None:
    from .config import CHOICES, TrainConfig
    d = TrainConfig()
    t = sub.add_parser("train", help="train a model (defaults: the chapter's run)",
                       epilog="example: rnnkit train --preset quality --corpus my.txt "
                              "--time-budget 300 --out runs/my")
    S = argparse.SUPPRESS  # config flags: a --preset fills only what the user did not give

    def opt(group, flag, kind=str, help=""):
        name = flag[2:].replace("-", "_")
        default = getattr(d, name)
        shown = {"corpus": "The Time Machine", "max_tokens": "10,000 for the book, all of a "
                 "--corpus", "prefix": "'time traveller' for the book, else the corpus's first "
                 "words", "end_on": "last for the book, else best"}.get(name, default)
        group.add_argument(flag, type=kind, default=S, choices=CHOICES.get(name),
                           help=f"{help} (default: {shown})".strip())

    g = t.add_argument_group("data")
    opt(g, "--corpus", help="UTF-8 text file, or - for standard input")
    opt(g, "--clean", help="d2l: letters and spaces, lower case (the book); none: keep all")
    opt(g, "--token", help="characters or whitespace-separated words")
    opt(g, "--min-freq", int, "rarer tokens become <unk>, e.g. 3")
    opt(g, "--max-tokens", int, "training tokens, -1 = all")
    opt(g, "--val-fraction", float, "held-out validation share, e.g. 0.1")
    opt(g, "--test-fraction", float, "held-out test share at the very end, e.g. 0.05")
    g = t.add_argument_group("model")
    opt(g, "--cell", help="the recurrent cell")
    opt(g, "--impl", help="bptt: hand-derived backward; autograd: the book's loop; torch: "
                          "nn.RNN/GRU/LSTM (picked for you when the flags need it)")
    opt(g, "--hidden", int, "hidden units, e.g. 512")
    opt(g, "--precision", help="fp16: CUDA, with a gradient scaler")
    opt(g, "--layers", int, "stacked layers (--impl torch)")
    opt(g, "--dropout", float, "dropout, e.g. 0.25 (--impl torch)")
    opt(g, "--embed", int, "learned embedding size, 0 = one-hot (--impl torch)")
    g.add_argument("--tie", action="store_true", default=S,
                   help="tie embedding and output weights (needs --embed == --hidden)")
    opt(g, "--ngram", int, "mix in a Kneser-Ney model of up to N tokens of context, fitted "
                           "on validation at the end; 0 = off (quality preset: 8)")
    _add_train_optimization_and_system(t, opt)
    t.set_defaults(func=cmd_train)


def _add_train_optimization_and_system(t, opt) -> None:
    from .config import PRESETS
    g = t.add_argument_group("optimization")
    g.add_argument("--preset", default=argparse.SUPPRESS, choices=sorted(PRESETS),
                   help="bundle of settings: d2l (the chapter) or quality (sized to your corpus "
                        "and --time-budget) (default: d2l)")
    opt(g, "--optimizer")
    opt(g, "--lr", float, "peak learning rate")
    opt(g, "--weight-decay", float, "e.g. 0.01")
    opt(g, "--warmup", int, "steps of linear warm-up")
    opt(g, "--schedule", help="cosine decays to lr/10; plateau halves it when validation stalls")
    opt(g, "--clip", float, "gradient global-norm bound")
    opt(g, "--epochs", int, "passes over the training slice")
    opt(g, "--patience", int, "early stop after N epochs without a better val loss; 0 = off")
    opt(g, "--time-budget", float, "stop after N seconds of training; 0 = none")
    opt(g, "--end-on", help="the weights the run ends on and generate/eval use")
    opt(g, "--batch-size", int, "rows per minibatch")
    opt(g, "--num-steps", int, "time steps per row")
    opt(g, "--sampling", help="sequential carries the state across batches")
    opt(g, "--seed", int, "seed of initialisation and batch order")
    g = t.add_argument_group("system and output")
    opt(g, "--device", help="cpu | cuda | cuda:N | mps | auto")
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
                   help="train with N processes on this machine (default: 1)")


def _add_generate(sub) -> None:
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
    _weights_flag(s)
    s.set_defaults(func=cmd_generate)


def _add_eval(sub) -> None:
    e = sub.add_parser("eval", help="perplexity and bits per character of a trained run",
                       epilog="example: rnnkit eval runs/latest --corpus other.txt")
    e.add_argument("run_dir", help="a directory made by 'rnnkit train'")
    e.add_argument("--corpus", help="text to score (default: the run's validation slice)")
    e.add_argument("--split", default="val", choices=["train", "val", "test"],
                   help="which slice of the run's corpus to score (default: val)")
    _weights_flag(e)
    e.set_defaults(func=cmd_eval)


def _weights_flag(p, ngram: bool = True) -> None:
    if ngram:
        p.add_argument("--no-ngram", dest="ngram", action="store_false",
                       help="the network alone, without the run's n-gram model (--ngram)")
    p.add_argument("--weights", help="best (the best validation epoch's), last, or a file in "
                                     "the run directory (default: what the run ended on)")


def _corpus_flags(p, *, required: bool) -> None:
    p.add_argument("--corpus", required=required,
                   help="UTF-8 text file" + ("" if required else " (default: The Time Machine)"))
    p.add_argument("--clean", default="d2l", choices=CLEAN_MODES, help="(default: d2l)")
    p.add_argument("--token", default="char", choices=TOKEN_MODES, help="(default: char)")
    p.add_argument("--min-freq", type=int, default=0, help="rarer tokens become <unk>")


def _add_export(sub) -> None:
    x = sub.add_parser("export", help="one step of a trained model as an ONNX graph",
                       epilog="example: rnnkit export runs/latest --format onnx --out tm.onnx")
    x.add_argument("run_dir", help="a directory made by 'rnnkit train'")
    x.add_argument("--format", default="onnx", choices=["onnx"], help="(default: onnx)")
    x.add_argument("--out", required=True, help="the .onnx file; its .json goes beside it")
    x.add_argument("--force", action="store_true", help="replace existing files")
    _weights_flag(x, ngram=False)
    x.set_defaults(func=cmd_export)


def _add_serve(sub) -> None:
    w = sub.add_parser("serve", help="a local web lab: play with trained runs, see inside them",
                       epilog="example: rnnkit serve runs/latest runs/shakespeare --port 8000")
    w.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="runs made by 'rnnkit train'")
    w.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only)")
    w.add_argument("--port", type=int, default=8000, help="(default: 8000; 0 = any free port)")
    w.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="with --host: also answer requests that name this machine NAME "
                        "(repeatable; '*': any name). Loopback names are always answered")
    w.set_defaults(func=cmd_serve)


def _add_vocab(sub) -> None:
    v = sub.add_parser("vocab", help="print the token frequency table of a corpus")
    _corpus_flags(v, required=False)
    v.set_defaults(func=cmd_vocab)


def _add_prepare(sub) -> None:
    r = sub.add_parser("prepare", help="encode and cache a corpus ahead of training",
                       epilog="example: rnnkit prepare --corpus enwik8.txt --clean none")
    _corpus_flags(r, required=True)
    r.set_defaults(func=cmd_prepare)


# ---- train --------------------------------------------------------------------------------
def cmd_train(args) -> int:
    from .distributed import launch
    from .perf import keep_freed_memory
    from .run import train_run
    given = _given_settings(args)
    out, resume = _train_target(args)
    config = None if resume else new_config(given, getattr(args, "preset", "d2l"))
    if resume and hasattr(args, "preset"):
        raise UsageError("--preset sets up new runs; a resumed run keeps its settings")
    if not args.checkpoint_every > 0 or not math.isfinite(args.checkpoint_every):
        raise UsageError("--checkpoint-every must be a positive number of seconds")
    if args.nproc < 1:
        raise UsageError("--nproc must be 1 or more")
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        _check_for_processes(config, out, resume, given, args.nproc, args.force)
        return launch(args.nproc, _without_nproc(args.argv))
    keep_freed_memory()
    train_run(config, out, resume=resume, changes=given, force=args.force, json_lines=args.json,
              checkpoint_every=args.checkpoint_every)
    return 0


def _given_settings(args) -> dict:
    """The TrainConfig settings given on the command line (not those a preset fills)."""
    import dataclasses
    from .config import TrainConfig
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if hasattr(args, f.name)}
    if "prefix" in given:
        _check_text(given["prefix"], "--prefix")
    if given.get("corpus") in ("-", "/dev/stdin"):
        from .config import STDIN
        from .encode import save_stdin
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError("--corpus - reads standard input, which is a terminal here; pipe "
                             "a text in, e.g. cat notes.txt | rnnkit train --corpus -")
        given["corpus_sha1"] = save_stdin(sys.stdin.buffer)
        given["corpus"] = STDIN
    return given


def _check_text(value: str, flag: str) -> None:
    if value == "":
        raise UsageError(f"{flag} must not be empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{flag} is not valid UTF-8 text") from None


def _train_target(args) -> tuple[str, bool]:
    """(run directory, resume?) from --out and --resume [RUN_DIR]."""
    if args.resume and args.force:
        raise UsageError("--resume and --force contradict each other; pick one")
    if isinstance(args.resume, str):
        if args.out is not None and Path(args.out) != Path(args.resume):
            raise UsageError(f"--resume {args.resume} and --out {args.out} name different runs; "
                             "give one of them")
        return args.resume, True
    return args.out or "runs/latest", bool(args.resume)


def new_config(given: dict, preset: str = "d2l"):
    """The TrainConfig of a new run: the preset, sized to the corpus for `quality`, under the
    flags given; an implementation that can run them when none was chosen."""
    from .config import PRESETS, TrainConfig
    settings = {**PRESETS[preset], **given}
    note = _choose_impl(settings, given)
    TrainConfig(**settings).validate()           # usage mistakes first, before reading data
    if preset == "quality":
        from .recipe import measure_rate, quality_settings
        from .run.setup import resolve_device
        tokens, vocab_size = _training_tokens(TrainConfig(**settings))
        budget = settings.get("time_budget", 0.0)
        rate = measure_rate(str(resolve_device(settings.get("device", "cpu")))) if budget else 0
        settings = {**PRESETS[preset], **quality_settings(tokens, vocab_size, budget, rate),
                    **given}
        note = _choose_impl(settings, given) or note
    config = TrainConfig(**settings).validate()
    if note:
        print(f"rnnkit: note: {note}", file=sys.stderr)
    return config


def _training_tokens(config) -> tuple[int, int]:
    """(training tokens, vocabulary size) the config's corpus gives (cached for the run)."""
    from .data import corpus_path, load_corpus, split_corpus
    ids, vocab = load_corpus(corpus_path(config), config.clean, config.token, config.min_freq)
    train, _, _ = split_corpus(ids, config.val_fraction, config.max_tokens or -1,
                               config.test_fraction)
    return len(train), len(vocab)


def _choose_impl(settings: dict, given: dict) -> str | None:
    """With no --impl given, run what the flags ask for on the implementation that can;
    returns the line that says so."""
    needs = [flag for flag, on in (
        (f"--layers {settings.get('layers')}", settings.get("layers", 1) > 1),
        (f"--dropout {settings.get('dropout')}", settings.get("dropout", 0) > 0),
        (f"--embed {settings.get('embed')}", settings.get("embed", 0) > 0),
        ("--tie", settings.get("tie", False)),
        ("--precision fp16", settings.get("precision") == "fp16"),
        (f"--precision bf16 with --cell {settings.get('cell')}",
         settings.get("precision") == "bf16" and settings.get("cell", "rnn") != "rnn"))
        if on]
    if needs and "impl" not in given and settings.get("impl", "bptt") != "torch":
        settings["impl"] = "torch"
        return (f"{', '.join(needs)} runs on torch's layers: using --impl torch (the "
                "from-scratch cells are one layer on one-hot inputs)")
    return None


def _check_for_processes(config, out: str, resume: bool, given: dict, nproc: int,
                         force: bool) -> None:
    """Catch before any rank starts what would stop every rank at once."""
    from . import checkpoint as ckpt
    from .config import STDIN
    from .run.rundir import check_out_dir
    if given.get("corpus") == STDIN:
        raise UsageError("--corpus - cannot feed several processes; save standard input to a "
                         "file and pass that")
    check_out_dir(Path(out), resume=resume, force=force)
    if resume:
        config = ckpt.load_config_and_vocab(out)[0].for_resume(given)
    if config.batch_size % nproc:
        raise UsageError(f"--batch-size {config.batch_size} does not split evenly over "
                         f"{nproc} processes; pick a multiple of {nproc}")
    if not resume:
        _training_tokens(config)                 # the corpus reads (and is cached) once


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line of each rank: this one without --nproc."""
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    return rest


# ---- generate / eval ----------------------------------------------------------------------
def _check_sampling(args) -> None:
    if args.prefix is not None:
        _check_text(args.prefix, "--prefix")
    if not 0 <= args.num_chars <= MAX_CHARS:
        raise UsageError(f"--num-chars must be between 0 and {MAX_CHARS:,}")
    if not (args.temperature >= 0 and math.isfinite(args.temperature)):
        raise UsageError("--temperature must be 0 (greedy) or more")
    if args.top_k is not None and args.top_k < 1:
        raise UsageError("--top-k must be 1 or more")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UsageError("--top-p must be in (0, 1]")
    if not 1 <= args.num_samples <= MAX_SAMPLES:
        raise UsageError(f"--num-samples must be between 1 and {MAX_SAMPLES}")
    if args.num_samples * args.num_chars > MAX_GENERATED:
        raise UsageError(f"--num-samples x --num-chars must be at most {MAX_GENERATED:,}")
    if args.seed is not None and not 0 <= args.seed < 1 << 63:
        raise UsageError("--seed must be in [0, 2^63)")
    if args.beam is None:
        if args.stop_at is not None or args.length_penalty:
            raise UsageError("--stop-at and --length-penalty go with --beam")
        return
    if not 1 <= args.beam <= 1024:
        raise UsageError("--beam must be between 1 and 1024")
    if args.temperature or args.top_k is not None or args.top_p is not None:
        raise UsageError("--beam searches for the likeliest text; it takes no --temperature, "
                         "--top-k or --top-p")
    if args.num_samples > args.beam:
        raise UsageError(f"--num-samples {args.num_samples} is more than --beam {args.beam} "
                         "can return")
    if not math.isfinite(args.length_penalty) or args.length_penalty < 0:
        raise UsageError("--length-penalty must be 0 or more")
    if args.stop_at is not None:
        _check_text(args.stop_at, "--stop-at")


def _load(args):
    from .checkpoint import load_run
    return load_run(args.run_dir, weights=args.weights, ngram=args.ngram)


def cmd_generate(args) -> int:
    from .generate import beam_search, generate_ids, prefix_ids
    _check_sampling(args)
    model, vocab, config = _load(args)
    prefix = config.prefix if args.prefix is None else args.prefix
    ids, unknown = prefix_ids(vocab, prefix, config.token)
    if not ids:
        raise UsageError("--prefix holds no token")
    if unknown:
        print(f"rnnkit: warning: {len(unknown)} prefix token(s) not in the vocabulary "
              f"({''.join(sorted(set(unknown)))[:40]!r}) read as <unk>", file=sys.stderr)
    sep = "" if config.token == "char" else " "

    def text(row: list[int]) -> str:
        return prefix + ("" if sep == "" or not row else sep) + sep.join(vocab.to_tokens(row))
    if args.beam is not None:
        stop = None
        if args.stop_at is not None:
            stop_ids, unknown = prefix_ids(vocab, args.stop_at, config.token)
            if len(stop_ids) != 1 or unknown:
                raise UsageError("--stop-at must be one token of the run's vocabulary")
            stop = stop_ids[0]
        best = beam_search(model, ids, args.num_chars, beam=args.beam,
                           num_results=args.num_samples, length_penalty=args.length_penalty,
                           stop_id=stop)
        for row, logp in best:
            print(text(row) if args.num_samples == 1 else f"{logp:.4f}\t{text(row)}")
        return 0
    out = generate_ids(model, ids, args.num_chars, num_samples=args.num_samples,
                       temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                       seed=args.seed)
    for row in out.tolist():
        print(text(row))
    return 0


def cmd_serve(args) -> int:
    from .server import serve
    from .webguard import is_loopback, split_host
    if not 0 <= args.port <= 65535:
        raise UsageError("--port must be between 0 and 65535")
    for name in args.allow_host:
        try:
            if name != "*":
                split_host(name)
        except ValueError:
            raise UsageError(f"--allow-host takes a host name, not {name!r}") from None
    if not is_loopback(args.host):
        print(f"rnnkit: warning: listening on {args.host}: anyone who can reach this machine "
              "on the network can use the lab and its models", file=sys.stderr)
    if "*" in args.allow_host:
        print("rnnkit: warning: --allow-host '*' answers requests for any host name, so a web "
              "page you visit can reach the lab through DNS rebinding", file=sys.stderr)

    def ready(url: str) -> None:
        print(f"rnnkit lab: {url}  (runs: {', '.join(args.run_dirs)}; Ctrl-C stops it)",
              flush=True)
    try:
        serve(args.run_dirs, args.host, args.port, allow_hosts=tuple(args.allow_host),
              ready=ready)
    except KeyboardInterrupt:    # uvicorn shut down cleanly, then passed Ctrl-C on: we are done
        pass
    print("rnnkit lab: stopped", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    from .export import export_onnx
    model_path, meta_path = export_onnx(args.run_dir, args.out, weights=args.weights,
                                        force=args.force)
    print(f"wrote {model_path} (one step: ids, state -> logits, next state) and {meta_path}")
    if (Path(args.run_dir) / "ngram.safetensors").exists():
        print("rnnkit: note: the graph is the network alone; the run's n-gram model (--ngram) "
              "is not part of it", file=sys.stderr)
    return 0


def cmd_eval(args) -> int:
    import numpy as np
    from .data import corpus_path, load_corpus, split_corpus
    from .train import evaluate
    model, vocab, config = _load(args)
    before = None                                  # the text before the one scored
    if args.corpus:
        ids, _ = load_corpus(args.corpus, config.clean, config.token, vocab=vocab)
        where = args.corpus
    else:
        ids, _ = load_corpus(corpus_path(config), config.clean, config.token, vocab=vocab)
        slices = split_corpus(ids, config.val_fraction, config.max_tokens, config.test_fraction)
        start = {"train": 0, "val": len(ids) - len(slices[1]) - len(slices[2]),
                 "test": len(ids) - len(slices[2])}[args.split]
        ids, before = slices[("train", "val", "test").index(args.split)], ids[:start]
        where = f"the {args.split} slice"
    unk = int(np.count_nonzero(ids == vocab.unk))
    if unk:
        print(f"rnnkit: warning: {unk} token(s) are not in the run's vocabulary and score as "
              "<unk>", file=sys.stderr)
    try:
        loss, tokens = evaluate(model, ids, batch_size=config.batch_size,
                                num_steps=config.num_steps, before=before)
    except ValueError as e:
        raise RnnkitError(f"{where}: {e}; give a longer text") from None
    unit = "char" if config.token == "char" else "word"
    mixed = getattr(model, "ngram", None)
    print(f"perplexity {math.exp(loss / tokens):.3f}, {loss / tokens / math.log(2):.4f} bits "
          f"per {unit} on {where} ({tokens:,} tokens)" + (
              f"; the network with its {mixed.order + 1}-gram model mixed in (--no-ngram: the "
              "network alone)" if mixed else ""))
    return 0


# ---- vocab / prepare / bench --------------------------------------------------------------
def _check_min_freq(args) -> None:
    if not 0 <= args.min_freq < 1 << 62:
        raise UsageError("--min-freq must be 0 or more")


def cmd_vocab(args) -> int:
    from .data import load_corpus
    _check_min_freq(args)
    ids, vocab = load_corpus(args.corpus, args.clean, args.token, args.min_freq)
    print(f"# {len(ids):,} tokens, vocabulary of {len(vocab)} (with <unk>)")
    counts = dict(vocab.token_freqs)
    for i, tok in enumerate(vocab.idx_to_token):
        print(f"{i}\t{json.dumps(tok, ensure_ascii=False)}\t{counts.get(tok, 0)}")
    return 0


def cmd_prepare(args) -> int:
    import time
    from .encode import count_characters, prepare
    _check_min_freq(args)
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
    if args.json_out is not None:        # refuse a path the result could not be written to
        target = Path(args.json_out)
        parent = target.parent if str(target.parent) else Path(".")
        if target.is_dir() or not parent.is_dir() or not os.access(parent, os.W_OK) or (
                target.exists() and not os.access(target, os.W_OK)):
            raise UsageError(f"--json-out {args.json_out}: cannot write a file there")
    return bench_main(quick=args.quick, json_out=args.json_out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    for stream in (sys.stdout, sys.stderr):  # a path that is not UTF-8 prints, escaped
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
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
        if os.environ.get("RANK", "0") != "0":   # under several processes, rank 0 speaks
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
