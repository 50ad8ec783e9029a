#!/usr/bin/env bash
# Round 4 of experiments/sweeps/README.md: `make sweep` as it ships (hparams_search=sentiment:
# MiniLM on a seeded 4,000-sentence SST-2 slice, 10% val carve, 16 trials, TPE seed 42, lr 1e-5..1e-3,
# 2..3 epochs, two validations an epoch, median pruner), the same study without pruning, then the
# pruned study's best refitted on all of SST-2 train and tested on dev. One after the other, warm
# trial start; then the pruned study again with cold trial starts (the warm vs cold share of wall time
# in steps: step_share.py). (Round 3, one validation an epoch, ran the first step as
# sst2_4000_median at 2d8dcd2.)
#   bash experiments/sweeps/run_sst2_4000.sh
#   STEPS="refit cold" bash experiments/sweeps/run_sst2_4000.sh     # some of the steps
# Reports are copied here (paths made relative); trial run dirs stay in logs/sweeps/.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
COMMON=(-m hparams_search=sentiment callbacks.progress_bar=null "$@")
source experiments/sweeps/sweep_steps.sh
STEPS=${STEPS:-default pruned unpruned refit cold}
# The default config (make train) on the same slice and validation carve: what the sweep must beat.
if step default; then
start=$SECONDS
$PY -m src.train data.limit_train=4000 data.val_fraction=0.1 test=false callbacks.progress_bar=null \
  hydra.run.dir=logs/sweeps/sst2_4000_default > experiments/sweeps/sst2_4000_default.log 2>&1
echo "wall_time_s: $((SECONDS - start))" > experiments/sweeps/sst2_4000_default.wall
cp logs/sweeps/sst2_4000_default/metrics.json experiments/sweeps/sst2_4000_default.metrics.json
sed -i "s#$PWD/##g" experiments/sweeps/sst2_4000_default.{metrics.json,log}
fi
step pruned && run sst2_4000_r4_median
step unpruned && run sst2_4000_r4_no_pruning hydra/sweeper/pruner=none
step refit && run sst2_4000_r4_median hydra.sweeper.refit=true   # the finished study: only the refit runs
step cold && run sst2_4000_r4_median_cold hydra.sweeper.trial_start=cold
true
