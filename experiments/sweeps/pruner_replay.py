"""What a pruner would have saved on a finished unpruned study, and what it would have lost.

    .venv/bin/python experiments/sweeps/pruner_replay.py experiments/sweeps/sst2_4000_s15_no_pruning/curves.json
    # from a finished study's sweep dir (its optuna.db), saving its curves for the above:
    .venv/bin/python experiments/sweeps/pruner_replay.py logs/sweeps/NAME experiments/sweeps/NAME/curves.json

Every trial of the unpruned study reported its validation value after every validation. This
feeds those curves, trial by trial in the order they ran, to each pruner of a grid (optuna's own
pruners in a fresh in-memory study) and stops a trial's curve where the pruner says so. For each
pruner it prints the share of the validations (= of the trial-epochs, validations being evenly
spaced) that would have run, and the best value among the trials that would have finished.

It is a replay, not a sweep: the trials stay those the unpruned study sampled, where a real pruned
sweep would tell TPE about its pruned trials and sample differently after the first cut. It also
prints how well each validation's ranking of the trials predicts their final ranking (Spearman),
which is what any pruner that cuts at that validation relies on.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Callable
from pathlib import Path

import optuna
from scipy.stats import spearmanr

P = optuna.pruners
Curve = tuple[dict[int, float], float]  # intermediate values by step, final value


def load_curves(path: Path) -> tuple[str, list[Curve]]:
    """The curves of a sweep dir's study (its optuna.db), or of a curves.json saved from one."""
    if path.suffix == ".json":
        saved = json.loads(path.read_text())
        curves = [
            ({int(k): v for k, v in c["values"].items()}, c["final"]) for c in saved["trials"]
        ]
        return saved["study"], curves
    name, sweep_dir = path.name, path
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(done) != len(study.trials):
        sys.exit(f"{name}: {len(study.trials) - len(done)} trials did not complete (pruned?)")
    return name, [(dict(t.intermediate_values), float(t.value)) for t in done]


def replay(curves: list[Curve], pruner: P.BasePruner) -> tuple[float, float, list[int]]:
    """(share of validations run, best final value of the trials not pruned, their numbers)."""
    study = optuna.create_study(direction="maximize", pruner=pruner, study_name="replay")
    run = best = 0.0
    kept = []
    for number, (values, final) in enumerate(curves):
        trial = study.ask()
        last = max(values)
        pruned = False
        for step in sorted(values):
            trial.report(values[step], step)
            run += 1
            # a trial at its last validation has trained fully: ftlab completes it (not PRUNED)
            if step < last and trial.should_prune():
                pruned = True
                break
        if pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, final)
            best = max(best, final)
            kept.append(number)
    return run / sum(len(v) for v, _ in curves), best, kept


def grid() -> dict[str, Callable[[], P.BasePruner]]:
    pruners: dict[str, Callable[[], P.BasePruner]] = {}
    for start, warm in itertools.product([3, 5], [1, 2, 3]):
        pruners[f"median startup={start} warmup={warm}"] = lambda s=start, w=warm: P.MedianPruner(
            n_startup_trials=s, n_warmup_steps=w
        )
        for pct in [25, 40]:
            pruners[f"percentile {pct} startup={start} warmup={warm}"] = (
                lambda s=start, w=warm, p=pct: P.PercentilePruner(
                    p, n_startup_trials=s, n_warmup_steps=w
                )
            )
    for low, factor, rate in itertools.product([1, 2, 3], [2, 3, 4], [0, 1]):
        pruners[f"successive_halving min={low} factor={factor} rate={rate}"] = (
            lambda a=low, b=factor, c=rate: P.SuccessiveHalvingPruner(
                min_resource=a, reduction_factor=b, min_early_stopping_rate=c
            )
        )
    for low, factor in itertools.product([1, 2, 3], [2, 3, 4]):
        pruners[f"hyperband min={low} factor={factor}"] = lambda a=low, b=factor: P.HyperbandPruner(
            min_resource=a, max_resource="auto", reduction_factor=b
        )
    return pruners


def save_curves(name: str, curves: list[Curve], out: Path) -> None:
    trials = [{"values": values, "final": final} for values, final in curves]
    out.write_text(json.dumps({"study": name, "trials": trials}, indent=1) + "\n")


def main(source: str, save: str | None = None, tolerance: float = 0.005) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name, curves = load_curves(Path(source))
    if save:
        save_curves(name, curves, Path(save))
    best = max(final for _, final in curves)
    print(
        f"{name}: {len(curves)} trials, {sum(len(v) for v, _ in curves)} validations, best {best}"
    )
    print("\nSpearman rank correlation of the value at validation k with the final value:")
    for k in range(1, min(len(v) for v, _ in curves) + 1):
        rho, p = spearmanr([v[k] for v, _ in curves], [f for _, f in curves])
        print(f"  k={k}: rho {rho:.2f} (p {p:.3f})")
    print(f"\n{'pruner':42s} validations  best    meets (<= 0.5, best within {tolerance})")
    for label, make in grid().items():
        share, kept_best, kept = replay(curves, make())
        ok = "yes" if share <= 0.5 and kept_best >= best - tolerance - 1e-9 else ""
        print(f"{label:42s} {share:5.2f}   {kept_best:.4f}  {ok:3s}  finished: {kept}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
