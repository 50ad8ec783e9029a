"""`python -m src.bench.storage`: one study, N concurrent workers: trials per second and database
connections, with every worker talking to PostgreSQL directly vs through Optuna's gRPC storage proxy
(`hydra.sweeper.storage_proxy`, src/sweep/storage_proxy.py).

Each worker is a process that loops for `--seconds`: ask (TPE: it reads every trial of the study),
then `--steps` reports each followed by `should_prune` (median pruner, as a trial does once per
epoch), then tell. The objective costs nothing, so what is measured is the storage path and the
sampler, the part of a sweep that grows with the number of workers. Modes:
- `direct`: each worker opens the database as ftlab's sweep does (`open_storage`: RDBStorage);
- `direct_cached`: the same wrapped in Optuna's in-process trial cache (`get_storage`);
- `proxy`: one proxy process holds the database (cached); workers speak gRPC to it.
Peak connections are PostgreSQL's client backends during the window (`pg_stat_activity`).

Writes `<out>/results.json` and `<out>/REPORT.md` (default experiments/sweeps/storage_proxy/).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import signal
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MODES = ("direct", "direct_cached", "proxy")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(url: str, port: int) -> None:
    from src.sweep.storage_proxy import serve

    serve(url, host="127.0.0.1", port=port)


def _worker(mode: str, target: str, study_name: str, seed: int, steps: int, go, stop, out) -> None:
    import random

    import optuna

    from src.sweep.storage_proxy import proxy_storage
    from src.sweep.study import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if mode == "proxy":
        storage: Any = proxy_storage(target)
    elif mode == "direct_cached":
        storage = optuna.storages.get_storage(open_storage(target))
    else:
        storage = open_storage(target)
    study = optuna.load_study(
        study_name=study_name,
        storage=storage,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
    )
    rng = random.Random(seed)
    done = errors = 0
    go.wait()
    while not stop.is_set():
        try:
            trial = study.ask()
            lr = trial.suggest_float("lr", 1e-5, 1e-3, log=True)
            trial.suggest_categorical("batch_size", [16, 32])
            value = rng.random() * (1.0 - abs(lr - 2e-4) * 500)
            for step in range(1, steps + 1):
                trial.report(value * step / steps, step)
                if trial.should_prune():
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    break
            else:
                study.tell(trial, value)
            done += 1
        except Exception:  # a refused connection, a timeout: counted, the worker goes on
            errors += 1
            time.sleep(0.1)
    out.put((done, errors))


def _client_backends(url: str) -> int:
    """PostgreSQL's client connections now, not counting the one that asks."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    from src.sweep.study import resolve_ref

    engine = sqlalchemy.create_engine(resolve_ref(url), poolclass=NullPool)
    query = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
    with engine.connect() as conn:
        return int(conn.execute(sqlalchemy.text(query)).scalar() or 0) - 1


def _watch(url: str, peak: list[int], stop: threading.Event) -> None:
    while not stop.wait(0.25):
        peak[0] = max(peak[0], _client_backends(url))


def measure(url: str, mode: str, workers: int, seconds: float, steps: int, name: str) -> dict:
    """One window: `workers` processes on a new study for `seconds`."""
    import optuna

    from src.sweep.study import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rdb = open_storage(url)
    optuna.create_study(study_name=name, storage=rdb, direction="maximize")
    rdb.engine.dispose()  # this process holds no connection during the window
    ctx = mp.get_context("fork")
    server = None
    target = url
    if mode == "proxy":
        port = _free_port()
        server = ctx.Process(target=_serve, args=(url, port), daemon=True)
        server.start()
        target = f"127.0.0.1:{port}"
    go, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(mode, target, name, i, steps, go, stop, out))
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    time.sleep(3.0 + 0.3 * workers)  # imports and connections, outside the window
    peak, watching = [0], threading.Event()
    watcher = threading.Thread(target=_watch, args=(url, peak, watching), daemon=True)
    watcher.start()
    go.set()
    started = time.time()
    time.sleep(seconds)
    stop.set()
    window = time.time() - started
    counts = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    watching.set()
    watcher.join()
    if server is not None:
        server.terminate()
        server.join()
    trials = sum(c[0] for c in counts)
    return {
        "trials": trials,
        "errors": sum(c[1] for c in counts),
        "trials_per_s": round(trials / window, 2),
        "peak_connections": peak[0],
    }


def run(workers: list[int], reps: int, seconds: float, steps: int) -> dict[str, Any]:
    from src.bench.postgres import local_postgres

    rows: dict[str, dict[str, Any]] = {}
    with local_postgres(max_connections=200) as url:
        for n in workers:
            for rep in range(reps):
                # alternate the order, so drift in machine load hits every mode alike
                order = MODES if rep % 2 == 0 else tuple(reversed(MODES))
                for mode in order:
                    r = measure(url, mode, n, seconds, steps, f"{mode}-{n}-{rep}")
                    row = rows.setdefault(f"{mode} x{n}", {"mode": mode, "workers": n, "runs": []})
                    row["runs"].append(r)
                    print(f"{mode} x{n} rep {rep}: {r}", flush=True)
    for row in rows.values():
        rates = [r["trials_per_s"] for r in row["runs"]]
        row["median_trials_per_s"] = statistics.median(rates)
        row["range"] = [min(rates), max(rates)]
        row["peak_connections"] = max(r["peak_connections"] for r in row["runs"])
        row["errors"] = sum(r["errors"] for r in row["runs"])
    return {"seconds": seconds, "steps": steps, "reps": reps, "rows": rows}


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# One study, N workers: PostgreSQL direct vs Optuna's gRPC storage proxy",
        "",
        f"Measured {results['date']} at {results['commit']} with `python -m src.bench.storage "
        f"--workers {' '.join(str(n) for n in results['workers'])} --reps {results['reps']} "
        f"--seconds {results['seconds']:g}`: each worker loops ask (TPE) -> {results['steps']} "
        "reports + should_prune (median) -> tell on one study, for the window; medians of the "
        "repetitions [range]. Peak connections: PostgreSQL client backends during the window.",
        "",
        "| mode | workers | trials/s | vs direct | peak DB connections | errors |",
        "|---|---|---|---|---|---|",
    ]
    rows = results["rows"]
    for row in rows.values():
        base = rows.get(f"direct x{row['workers']}", {}).get("median_trials_per_s") or 0
        ratio = f"{row['median_trials_per_s'] / base:.2f}" if base else "-"
        lo, hi = row["range"]
        lines.append(
            f"| {row['mode']} | {row['workers']} | {row['median_trials_per_s']:.1f} "
            f"[{lo:.1f}-{hi:.1f}] | {ratio} | {row['peak_connections']} | {row['errors']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    from src.bench.record import write_record

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--steps", type=int, default=3, help="reports per trial")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "experiments" / "sweeps" / "storage_proxy"
    )
    args = parser.parse_args()
    # a kill ends the run through the `finally`s: the PostgreSQL server and proxy do not outlive it
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = run(args.workers, args.reps, args.seconds, args.steps)
    results["workers"] = args.workers
    write_record(args.out, results, markdown)


if __name__ == "__main__":
    main()
