# Sourced by the run_sst2_4000*.sh scripts, from the project root, with PY and COMMON (the
# sweep command's arguments) set: `run NAME [overrides...]` runs one sweep as study NAME, appends
# its log and wall time to experiments/sweeps/NAME.{log,wall} and copies its report here (paths
# made relative); `step NAME` says whether NAME is in $STEPS.
run() {  # name, extra overrides...
  local name=$1; shift
  local start=$SECONDS
  $PY -m src.train "${COMMON[@]}" hydra.sweeper.study_name="$name" "$@" >> "experiments/sweeps/$name.log" 2>&1
  echo "wall_time_s: $((SECONDS - start))" >> "experiments/sweeps/$name.wall"
  mkdir -p "experiments/sweeps/$name"
  cp logs/sweeps/"$name"/{optimization_results.yaml,trials.csv} "experiments/sweeps/$name/"
  [ -f logs/sweeps/"$name"/best.yaml ] && cp logs/sweeps/"$name"/best.yaml "experiments/sweeps/$name/"
  cp -r logs/sweeps/"$name"/plots "experiments/sweeps/$name/"
  sed -i "s#$PWD/##g" "experiments/sweeps/$name"/*.{yaml,csv} "experiments/sweeps/$name.log"
}
step() { [[ " $STEPS " == *" $1 "* ]]; }
