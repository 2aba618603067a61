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
    code = main()
    if code == 130:
        # An interrupt main() answered (one line said, the state saved) can still leave
        # CPython's "unhandled KeyboardInterrupt" mark set — seen when it lands inside an
        # import — and the interpreter would then end itself by SIGINT (-2), not 130.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    return code


if __name__ == "__main__":
    sys.exit(run())
