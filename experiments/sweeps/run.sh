#!/usr/bin/env bash
# The sweeps of experiments/sweeps/README.md: MiniLM on a 400-sentence SST-2 slice (300 train /
# 100 val) over conf/hparams_search/sentiment.yaml's space (lr, batch size, epochs 1-4, layer
# decay, weight decay, warmup), with Hyperband pruning and without. Both studies run at the same
# time (one trial process each, one thread each), so they share the machine's load alike.
#   N_TRIALS=6 experiments/sweeps/run.sh                                        # round 1
#   N_TRIALS=10 experiments/sweeps/run.sh 'optimizer.lr=tag(log,interval(2e-5,3e-4))'  # round 2
# Reports are copied here (paths made relative); trial run dirs stay in logs/sweeps/.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
N_TRIALS=${N_TRIALS:-10}
TAG=${TAG:-sst2_400_n${N_TRIALS}}
COMMON=(
  -m hparams_search=sentiment model=bert task=sentiment
  data.limit_train=400 data.val_fraction=0.25 hydra.sweeper.n_trials="$N_TRIALS"
  test=false callbacks.model_checkpoint=null +trainer.enable_checkpointing=false callbacks.progress_bar=null
  "$@"
)
run() {  # name, extra overrides...
  local name=$1; shift
  local start=$SECONDS
  $PY -m src.train "${COMMON[@]}" hydra.sweeper.study_name="$name" "$@" > "experiments/sweeps/$name.log" 2>&1
  echo "wall_time_s: $((SECONDS - start))" > "experiments/sweeps/$name.wall"
  mkdir -p "experiments/sweeps/$name"
  cp logs/sweeps/"$name"/{optimization_results.yaml,trials.csv} "experiments/sweeps/$name/"
  cp -r logs/sweeps/"$name"/plots "experiments/sweeps/$name/"
  sed -i "s#$PWD/##g" "experiments/sweeps/$name"/*.{yaml,csv} "experiments/sweeps/$name.log"
}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
run "${TAG}_hyperband" &
run "${TAG}_no_pruning" hydra.sweeper.pruner=null &
wait
