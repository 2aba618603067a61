"""The exception types for user mistakes; the CLI prints them as `rnnkit: error: …`."""


class RnnkitError(Exception):
    """A runtime failure the user can fix (bad file, bad run directory); exit status 1."""


class Diverged(RnnkitError):
    """The training loss became NaN or infinite."""


class UsageError(RnnkitError):
    """A mistaken command line or setting; exit status 2."""


class Interrupted(Exception):
    """Training stopped by a signal after saving a checkpoint; exit status 128 + signal."""

    def __init__(self, signum: int, where: str, out: str):
        super().__init__(where)
        self.code, self.where, self.out = 128 + signum, where, out
