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
        # no abbreviations: --hid silently meaning --hidden hides a typo (see `did_you_mean`)
        super().__init__(*args, exit_on_error=False, allow_abbrev=False, **kwargs)

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


def path(value: str) -> str:
    """An argparse `type` for a file or directory: an empty one names nothing (it would mean
    the current directory, or fail later with a less clear message)."""
    if value == "":
        raise argparse.ArgumentTypeError("must name a file or directory, not ''")
    return value


def subcommand_parser(parser: argparse.ArgumentParser, argv: list[str]):
    """The parser of the subcommand `argv` names (the top-level one when it names none)."""
    command = next((a for a in argv if not a.startswith("-")), None)
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    return sub.choices.get(command, parser) if sub is not None else parser


def did_you_mean(parser: argparse.ArgumentParser, argv: list[str], message: str) -> str:
    """`message` about unrecognized flags, with the closest flag the subcommand has."""
    import difflib
    target = subcommand_parser(parser, argv)
    flags = [f for a in target._actions for f in a.option_strings]
    message = message.split(" (see ")[0]
    wrong = [w.split("=")[0] for w in message.split(":", 1)[-1].split() if w.startswith("--")]
    hints = [m[0] for w in wrong for m in [difflib.get_close_matches(w, flags, 1)] if m]
    return message + (f"; did you mean {', '.join(hints)}?" if hints else "") + \
        f" (see '{target.prog} --help')"


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


def require(module: str, extra: str, feature: str) -> None:
    """One rule for optional parts: a feature that needs an extra checks for it before it
    reads or writes anything, and says in one line what to install (exit 2)."""
    import importlib.util
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise UsageError(f"{feature} needs the '{extra}' extra: pip install 'rnnkit[{extra}]' "
                         f"(from a clone: pip install -e '.[{extra}]')")


def weights_flag(p, ngram: bool = True) -> None:
    if ngram:
        p.add_argument("--no-ngram", dest="ngram", action="store_false",
                       help="the network alone, without the run's n-gram model (--ngram)")
    p.add_argument("--weights", help="best (the best validation epoch's), last, or a file in "
                                     "the run directory (default: what the run ended on)")
