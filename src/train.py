"""`python -m src.train [overrides]`: fine-tune a pretrained classifier, test its best checkpoint.

The entry point only: Hydra composes the config, then one run (src/pipeline.py: check config ->
data -> network -> Trainer.fit -> Trainer.test(best) -> metrics.json) or, with `cv.folds=K`, a
cross-validation of K such runs (src/cv.py). Returns the monitored metric (what a sweep
optimizes).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

import src  # noqa: F401  (registers the ${ftlab_root:} resolver)
from src.cv import cross_validate, cv_folds
from src.errors import exit_on_user_error
from src.pipeline import train


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    with exit_on_user_error():
        if cv_folds(cfg):
            return cross_validate(cfg)["monitor_value"]
        return train(cfg)["monitor_value"]


if __name__ == "__main__":
    main()
