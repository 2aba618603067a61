"""`rnnkit vocab` and `rnnkit prepare` (a corpus, without a run), and `rnnkit bench`."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import UsageError
from ..text import CLEAN_MODES, TOKEN_MODES
from .args import choice, choices, path


def add_parsers(sub) -> None:
    v = sub.add_parser("vocab", help="print the token frequency table of a corpus")
    _corpus_flags(v, required=False)
    v.set_defaults(func=cmd_vocab)
    r = sub.add_parser("prepare", help="encode and cache a corpus ahead of training",
                       epilog="example: rnnkit prepare --corpus enwik8.txt --clean none")
    _corpus_flags(r, required=True)
    r.set_defaults(func=cmd_prepare)
    b = sub.add_parser("bench", help="side-by-side speed table (README.md, section Speed)")
    b.add_argument("--quick", action="store_true", help="finish in under a minute")
    b.add_argument("--json-out", type=path, help="also write the JSON result to this file")
    b.set_defaults(func=cmd_bench)


def _corpus_flags(p, *, required: bool) -> None:
    p.add_argument("--corpus", required=required, type=path,
                   help="UTF-8 text file" + ("" if required else " (default: The Time Machine)"))
    p.add_argument("--clean", default="d2l", type=choice(CLEAN_MODES),
                   metavar=choices(CLEAN_MODES), help="(default: d2l)")
    p.add_argument("--token", default="char", type=choice(TOKEN_MODES),
                   metavar=choices(TOKEN_MODES), help="(default: char)")
    p.add_argument("--min-freq", type=int, default=0, help="rarer tokens become <unk>")


def _check_min_freq(args) -> None:
    if not 0 <= args.min_freq < 1 << 62:
        raise UsageError("--min-freq must be 0 or more")


def cmd_vocab(args) -> int:
    from ..data import load_corpus
    _check_min_freq(args)
    ids, vocab = load_corpus(args.corpus, args.clean, args.token, args.min_freq)
    print(f"# {len(ids):,} tokens, vocabulary of {len(vocab)} (with <unk>)")
    counts = dict(vocab.token_freqs)
    for i, tok in enumerate(vocab.idx_to_token):
        print(f"{i}\t{json.dumps(tok, ensure_ascii=False)}\t{counts.get(tok, 0)}")
    return 0


def cmd_prepare(args) -> int:
    import time
    from ..encode import count_characters, prepare
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
    from ..bench import main as bench_main
    if args.json_out is not None:        # refuse a path the result could not be written to
        target = Path(args.json_out)
        parent = target.parent if str(target.parent) else Path(".")
        if target.is_dir() or not parent.is_dir() or not os.access(parent, os.W_OK) or (
                target.exists() and not os.access(target, os.W_OK)):
            raise UsageError(f"--json-out {args.json_out}: cannot write a file there")
    return bench_main(quick=args.quick, json_out=args.json_out)
