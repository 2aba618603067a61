"""A training run, as named parts, in the order a run flows:

    settings.py  defaults, preset and flags → the run's TrainConfig      (`resolve_settings`)
    setup.py     corpus → vocabulary → slices → model → optimizer       (`setup_training`)
    state.py     where the run stands: what a checkpoint saves          (`RunState`, save/load)
    rundir.py    the run directory: check, lock, stage, checkpoints     (`RunDirectory`)
    loop.py      epochs → batches → step → end of epoch                 (`fit`)
    policies.py  learning rate, stopping, checkpoint cadence            (consulted by `fit`)
    report.py    progress bar, console / JSON lines, metrics, plot      (`Reporter`)
    closing.py   the end: best weights, n-gram mixture, samples, copies (`summarize`)
    run.py       the run itself: new or opened, trained, evaluated, generated from  (`Run`)
"""
from .run import Run, train_run

__all__ = ["Run", "train_run"]
