"""What the subcommands share: the parser, choice flags and checks of free text."""
from __future__ import annotations

import argparse
from typing import Callable

from ..errors import UsageError


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one `rnnkit: error:` line and exit status 2. Errors in
    a flag's value reach `main` as ArgumentError (exit_on_error=False), spelt in rnnkit's words
    by the flag's own `type` (see `choice`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, exit_on_error=False, **kwargs)

    def error(self, message: str):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def choice(allowed) -> Callable[[str], str]:
    """An argparse `type` that accepts one of `allowed` and says so in rnnkit's words; pass
    `metavar=choices(allowed)` so that the usage lists them."""
    def check(value: str) -> str:
        if value not in allowed:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(allowed)}, not "
                                             f"{value!r}")
        return value
    return check


def choices(allowed) -> str:
    return "{" + ",".join(allowed) + "}"


def check_text(value: str, flag: str) -> None:
    """A text flag must be non-empty UTF-8 (argv may hold bytes that are not)."""
    if value == "":
        raise UsageError(f"{flag} must not be empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{flag} is not valid UTF-8 text") from None


def weights_flag(p, ngram: bool = True) -> None:
    if ngram:
        p.add_argument("--no-ngram", dest="ngram", action="store_false",
                       help="the network alone, without the run's n-gram model (--ngram)")
    p.add_argument("--weights", help="best (the best validation epoch's), last, or a file in "
                                     "the run directory (default: what the run ended on)")
