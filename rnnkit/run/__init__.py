"""A training run, as named parts, in the order a run flows:

    setup.py     corpus → vocabulary → splits → model → optimizer       (`setup_run` → `Run`)
    state.py     where the run stands: what a checkpoint saves          (`RunState`, save/load)
    rundir.py    the run directory: check, lock, stage, checkpoints     (`RunDirectory`)
    loop.py      epochs → batches → step → end of epoch                 (`fit`)
    policies.py  learning rate, stopping, checkpoint cadence            (consulted by `fit`)
    report.py    progress bar, console / JSON lines, metrics, plot      (`Reporter`)
    runner.py    all of it, end to end                                  (`train_run`)
"""
from .runner import train_run

__all__ = ["train_run"]
