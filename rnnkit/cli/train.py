"""`rnnkit train`: the flags → the run's settings (run/settings.py) → `Run.train`, in named
steps: the flags given, standard input read into the cache, the corpus and the machine
measured when the preset sizes the run to them, the processes started."""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from pathlib import Path

from ..config import CHOICES, PRESETS, STDIN, TrainConfig
from ..errors import UsageError
from .args import check_text, choice, choices, path

DEFAULTS_SHOWN = {"corpus": "The Time Machine", "max_tokens": "10,000 for the book, all of a "
                  "--corpus", "prefix": "'time traveller' for the book, else the corpus's first "
                  "words", "end_on": "last for the book, else best"}


def add_parsers(sub) -> None:
    d = TrainConfig()
    t = sub.add_parser("train", help="train a model (defaults: the chapter's run)",
                       epilog="example: rnnkit train --preset quality --corpus my.txt "
                              "--time-budget 300 --out runs/my")

    def opt(group, flag, kind=str, help=""):
        # every setting's default is None, "not given": a --preset fills only those
        name = flag[2:].replace("-", "_")
        shown = DEFAULTS_SHOWN.get(name, getattr(d, name))
        allowed = CHOICES.get(name)
        group.add_argument(flag, type=choice(allowed) if allowed else kind,
                           metavar=choices(allowed) if allowed else None,
                           help=f"{help} (default: {shown})".strip())

    g = t.add_argument_group("data")
    opt(g, "--corpus", path, "UTF-8 text file, or - for standard input")
    opt(g, "--clean", help="d2l: letters and spaces, lower case (the book); none: keep all")
    opt(g, "--token", help="characters or whitespace-separated words")
    opt(g, "--min-freq", int, "rarer tokens become <unk>, e.g. 3")
    opt(g, "--max-tokens", int, "training tokens, -1 = all")
    opt(g, "--val-fraction", float, "held-out validation share, e.g. 0.1")
    opt(g, "--test-fraction", float, "held-out test share at the very end, e.g. 0.05")
    g = t.add_argument_group("model")
    opt(g, "--cell", help="the recurrent cell; mingru/minlstm train in parallel over time; "
                          "transformer: nanoGPT's shape, its context --num-steps")
    opt(g, "--impl", help="bptt: hand-derived backward; autograd: the book's loop; torch: "
                          "nn.RNN/GRU/LSTM (picked for you when the flags need it); compiled: "
                          "bptt with every product in C (--cell rnn; fp32 or bf16)")
    opt(g, "--hidden", int, "hidden units, e.g. 512 (transformer: its width)")
    opt(g, "--precision", help="fp16: CUDA, with a gradient scaler")
    opt(g, "--layers", int, "stacked layers (--impl torch)")
    opt(g, "--dropout", float, "dropout, e.g. 0.25 (--impl torch)")
    opt(g, "--embed", int, "learned embedding size, 0 = one-hot (--impl torch; mingru/minlstm: "
                           "their residual width, 0 = --hidden)")
    g.add_argument("--tie", action="store_true", default=None,
                   help="tie embedding and output weights (needs --embed == --hidden)")
    g.add_argument("--token-shift", action=argparse.BooleanOptionalAction, default=None,
                   help="mingru/minlstm: each cell also reads the step before, mixed in per "
                        "channel (quality preset: on)")
    opt(g, "--ngram", int, "mix in a Kneser-Ney model of up to N tokens of context, fitted "
                           "on validation at the end; 0 = off (quality preset: 8)")
    g = t.add_argument_group("optimization")
    g.add_argument("--preset", type=choice(sorted(PRESETS)), metavar=choices(sorted(PRESETS)),
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
    g.add_argument("--out", type=path, help="run directory (default: runs/latest)")
    g.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR", type=path,
                   help="continue the run in RUN_DIR (or in --out) exactly where it stopped")
    g.add_argument("--force", action="store_true", help="replace the run in --out")
    g.add_argument("--checkpoint-every", type=float, default=300.0,
                   help="seconds between mid-epoch checkpoints (default: 300)")
    opt(g, "--prefix", help="prefix of the samples printed")
    opt(g, "--sample-every", int, "print a sample every N epochs, 0 = never")
    g.add_argument("--json", action="store_true", help="JSON lines on stdout, nothing else")
    g.add_argument("--nproc", type=int, default=1,
                   help="train with N processes on this machine (default: 1)")
    t.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from ..distributed import launch
    from ..perf import keep_freed_memory
    from ..run import Run
    check_flags(args)
    given = given_settings(args)                     # 1. the settings the user gave
    out, resume = train_target(args)                 # 2. which run
    if given.get("corpus") in ("-", "/dev/stdin"):   # 3. standard input, read once
        given = read_stdin(given)
    if resume:                                       # 4. the settings: the run's, or new
        run = Run.resume(out)
    else:
        run = Run.new(new_config(given, args.preset or "d2l"), out)
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        _check_for_processes(run, given, args.nproc, args.force)
        return launch(args.nproc, _without_nproc(args.argv))   # 5. the processes
    keep_freed_memory()
    run.train(changes=given if resume else None, force=args.force, json_lines=args.json,
              checkpoint_every=args.checkpoint_every)
    return 0


def check_flags(args) -> None:
    """The flags that are not settings of the run."""
    if args.resume and args.preset is not None:
        raise UsageError("--preset sets up new runs; a resumed run keeps its settings")
    if not args.checkpoint_every > 0 or not math.isfinite(args.checkpoint_every):
        raise UsageError("--checkpoint-every must be a positive number of seconds")
    if args.nproc < 1:
        raise UsageError("--nproc must be 1 or more")


def given_settings(args) -> dict:
    """The TrainConfig settings given on the command line (None: not given)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if getattr(args, f.name, None) is not None}
    if "prefix" in given:
        check_text(given["prefix"], "--prefix")
    return given


def read_stdin(given: dict) -> dict:
    """`--corpus -`: standard input, read once into the cache; the run records its sha1."""
    from ..encode import save_stdin
    if sys.stdin is None or sys.stdin.isatty():
        raise UsageError("--corpus - reads standard input, which is a terminal here; pipe "
                         "a text in, e.g. cat notes.txt | rnnkit train --corpus -")
    return {**given, "corpus_sha1": save_stdin(sys.stdin.buffer), "corpus": STDIN}


def train_target(args) -> tuple[str, bool]:
    """(run directory, resume?) from --out and --resume [RUN_DIR]."""
    if args.resume and args.force:
        raise UsageError("--resume and --force contradict each other; pick one")
    if isinstance(args.resume, str):
        if args.out is not None and Path(args.out) != Path(args.resume):
            raise UsageError(f"--resume {args.resume} and --out {args.out} name different runs; "
                             "give one of them")
        return args.resume, True
    return args.out or "runs/latest", bool(args.resume)


def new_config(given: dict, preset: str = "d2l") -> TrainConfig:
    """The TrainConfig of a new run (`resolve_settings`): the flags checked first, before
    anything is read; for a preset sized to the corpus, the corpus counted and, with a time
    budget, this machine's speed measured; then the settings resolved with what they gave."""
    from ..run.settings import needs_corpus, resolve_settings
    config, note = resolve_settings(given, preset)   # usage mistakes first, before reading data
    if needs_corpus(preset):
        from ..recipe import choose_kind
        corpus = corpus_facts(config)
        kind = given.get("cell") or choose_kind(corpus[0], config.time_budget)[0]
        rate = measure_speed(config, kind) if config.time_budget else 0.0
        config, note = resolve_settings(given, preset, corpus=corpus, rate=rate)
    if note:
        print(f"rnnkit: note: {note}", file=sys.stderr)
    return config


def corpus_facts(config: TrainConfig) -> tuple[int, int]:
    """(training tokens, vocabulary size) of the config's corpus (read once into the cache)."""
    from ..data import read_slices
    vocab, slices = read_slices(config)
    return len(slices["train"]), len(vocab)


def measure_speed(config: TrainConfig, kind: str) -> float:
    """This machine's training FLOP/s for `kind` on the config's device: half a second."""
    from ..recipe import measure_rate
    from ..run.setup import resolve_device
    return measure_rate(str(resolve_device(config.device)), kind=kind)


def _check_for_processes(run, given: dict, nproc: int, force: bool) -> None:
    """Catch before any rank starts what would stop every rank at once."""
    from ..run.settings import check_processes
    if given.get("corpus") == STDIN:
        raise UsageError("--corpus - cannot feed several processes; save standard input to a "
                         "file and pass that")
    run.check_target(force)
    config = run.config.for_resume(given) if run.exists else run.config
    check_processes(config.batch_size, nproc)
    if not run.exists:
        corpus_facts(config)                     # the corpus reads (and is cached) once


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
