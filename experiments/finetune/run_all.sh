#!/usr/bin/env bash
# Run the fine-tuning comparison one experiment at a time, then print the results table.
#   bash experiments/finetune/run_all.sh            (from the project root)
set -euo pipefail
PY=${PY:-.venv/bin/python}
for exp in sst2_1k_feature_extraction sst2_1k_full sst2_1k_gradual sst2_1k_lora \
           hymenoptera_feature_extraction hymenoptera_partial hymenoptera_full hymenoptera_lora; do
  echo "== $exp"
  "$PY" -m src.train experiment="$exp" callbacks.progress_bar=null "$@"
done
"$PY" experiments/finetune/collect.py logs
