#!/usr/bin/env bash
# 5-fold CV on the SST-2 1k slice, then the ensemble of the 5 fold models on dev.
#   bash experiments/cv/run.sh            (from the project root)
set -euo pipefail
PY=${PY:-.venv/bin/python}
RUN=${RUN:-logs/cv_sst2_1k/runs/cv5}
"$PY" -m src.train experiment=sst2_1k_cv5 callbacks.progress_bar=null hydra.run.dir="$RUN" resume=true "$@"
"$PY" -m src.ensemble run_dirs="[$RUN]" hydra.run.dir="$RUN/ensemble"
# checkpoint paths relative to the project root (no machine paths in the committed results)
sed "s#$PWD/##g" "$RUN/metrics.json" > experiments/cv/sst2_1k_cv5_metrics.json
sed "s#$PWD/##g" "$RUN/ensemble/metrics.json" > experiments/cv/sst2_1k_cv5_ensemble_metrics.json
