"""ftlab's Hydra Sweeper: Optuna studies with pruning, resume and parallel trial processes.

Hydra instantiates sweepers only from the `hydra_plugins` namespace package, so this thin plugin
lives at the project root (found when commands run from there, as `python -m src.train` does);
the work is done in `src/sweep/`.
"""
