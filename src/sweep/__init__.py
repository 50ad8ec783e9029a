"""Optuna sweeps for ftlab: the search space, the study, the trial processes and the report.

The Hydra side is a thin Sweeper plugin in `hydra_plugins/ftlab_sweeper/`; everything it does
lives here so it can be tested and reused (`python -m src.sweep_report` reads the same studies).
A trial is a separate `python -m src.train` process; `src.sweep.trial` is its side of the bargain.
"""
