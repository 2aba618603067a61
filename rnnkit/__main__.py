"""The `rnnkit` command's entry point (and `python -m rnnkit`). It answers Ctrl-C from the very
start: importing the CLI (torch and friends) takes a noticeable moment, and an interrupt then
must end like any other, in one line and exit 130, not a traceback through the imports."""
import os
import signal
import sys


def _interrupted_while_starting(signum, frame) -> None:
    os.write(2, b"rnnkit: error: interrupted\n")
    os._exit(130)


def run() -> int:
    previous = signal.signal(signal.SIGINT, _interrupted_while_starting)
    from .cli import main
    signal.signal(signal.SIGINT, previous)   # main() answers KeyboardInterrupt from here on
    return main()


if __name__ == "__main__":
    sys.exit(run())
