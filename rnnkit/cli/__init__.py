"""The `rnnkit` command: train | generate | eval | vocab | prepare | export | serve | bench.
The only package that reads argv: one module per purpose (train.py; use.py: generate and eval;
serve.py: serve and export; corpus.py: vocab, prepare and bench), each a thin adapter over
`rnnkit.run.Run` and the modules under it. Every subcommand checks its settings before it
reads, allocates or writes anything.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback

from ..errors import Interrupted, RnnkitError, UsageError
from . import corpus, serve, train, use
from .args import Parser, did_you_mean, subcommand_parser
from .train import new_config  # noqa: F401  (the settings of `rnnkit train`, for callers)

SUBCOMMANDS = (train, use, serve, corpus)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="rnnkit", description="Character-level RNN language models, from the "
                "Dive into Deep Learning chapter to real training runs.",
                epilog="example: rnnkit train --epochs 50 --out runs/tm && "
                       "rnnkit generate runs/tm --prefix 'time traveller'")
    p.add_argument("--debug", action="store_true", help="show a traceback on errors")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in SUBCOMMANDS:
        module.add_parsers(sub)
    return p


def _usage_error(e: argparse.ArgumentError, parser, argv: list[str]) -> UsageError:
    prog = subcommand_parser(parser, argv).prog
    name, message = e.argument_name or "", e.message
    if message.startswith("invalid choice: "):   # the subcommand's name: "no command 'x' (…)"
        return UsageError(f"no {name} {message[len('invalid choice: '):]} (see '{prog} --help')")
    return UsageError(f"{name + ' ' if name else ''}{message} (see '{prog} --help')")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv           # before or after the subcommand, as a user puts it
    argv = [a for a in argv if a != "--debug"]
    for stream in (sys.stdout, sys.stderr):  # a path that is not UTF-8 prints, escaped
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except argparse.ArgumentError as e:
            raise _usage_error(e, parser, argv) from None
        except UsageError as e:
            if "unrecognized arguments" not in str(e):
                raise
            raise UsageError(did_you_mean(parser, argv, str(e))) from None
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
