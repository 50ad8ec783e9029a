#!/usr/bin/env bash
# Session 15's pair (experiments/sweeps/README.md): the shipped search (hparams_search=sentiment)
# with longer trials (3..5 epochs instead of 2..3), successive halving with its first rung at one
# epoch (min_resource=2 half-epoch validations, reduction factor 3: rungs at 1 and 3 epochs), then the
# same study unpruned. The pruner was chosen before either ran (see the README for why).
#   bash experiments/sweeps/run_sst2_4000_s15.sh
#   STEPS=unpruned bash experiments/sweeps/run_sst2_4000_s15.sh     # one of the steps
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
COMMON=(-m hparams_search=sentiment callbacks.progress_bar=null
        "hydra.sweeper.params={trainer.max_epochs:'range(3,6)'}" "$@")
source experiments/sweeps/sweep_steps.sh
STEPS=${STEPS:-pruned unpruned}
step pruned && run sst2_4000_s15_sh hydra/sweeper/pruner=successive_halving hydra.sweeper.pruner.min_resource=2
step unpruned && run sst2_4000_s15_no_pruning hydra/sweeper/pruner=none
# The check on new trials: the pruner that pruner_replay.py picked on the unpruned study above
# (successive halving from the first half-epoch, reduction factor 2), with another sampler seed,
# so that neither study's trials were seen when it was picked.
SEED2=(hydra.sweeper.sampler.seed=43)
step pruned2 && run sst2_4000_s15_seed43_sh "${SEED2[@]}" hydra/sweeper/pruner=successive_halving \
  hydra.sweeper.pruner.min_resource=1 hydra.sweeper.pruner.reduction_factor=2
step unpruned2 && run sst2_4000_s15_seed43_no_pruning "${SEED2[@]}" hydra/sweeper/pruner=none
true
