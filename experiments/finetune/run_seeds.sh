#!/usr/bin/env bash
# The technique table with 3 seeds: every experiment overlay once per seed, one run at a time,
# then the mean ± std table.  From the project root:
#   bash experiments/finetune/run_seeds.sh                 (all: about an hour on 2 cores)
#   SEEDS="42 43" EXPERIMENTS="sst2_1k_full sst2_1k_phases" bash experiments/finetune/run_seeds.sh
# The data stay fixed (data.seed=42: the same 1,000 SST-2 sentences and the same validation
# carve for every run); the seed changes the head's initialisation, dropout and batch order.
# Runs land in logs/ft_<experiment>_seed<seed>/runs/.
set -euo pipefail
PY=${PY:-.venv/bin/python}
SEEDS=${SEEDS:-42 43 44}
EXPERIMENTS=${EXPERIMENTS:-sst2_1k_feature_extraction sst2_1k_full sst2_1k_gradual sst2_1k_lora \
  sst2_1k_phases hymenoptera_feature_extraction hymenoptera_partial hymenoptera_full \
  hymenoptera_lora hymenoptera_phases}
for exp in $EXPERIMENTS; do
  for seed in $SEEDS; do
    if ls "logs/ft_${exp}_seed${seed}"/runs/*/metrics.json >/dev/null 2>&1; then
      echo "== $exp seed $seed: done already"; continue
    fi
    echo "== $exp seed $seed"
    "$PY" -m src.train experiment="$exp" seed="$seed" data.seed=42 \
      task_name="ft_${exp}_seed${seed}" callbacks.progress_bar=null "$@"
  done
done
"$PY" experiments/finetune/collect.py --seeds logs
