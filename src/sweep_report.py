"""`python -m src.sweep_report STORAGE STUDY [OUT_DIR]`: rebuild a sweep's report from its study.

STORAGE is the study's storage: a SQLite file (`logs/sweeps/sentiment/optuna.db`) or an RDB URL
(`postgresql://user:pass@host/db`). OUT_DIR defaults to `logs/sweeps/<STUDY>`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from src import PROJECT_ROOT
from src.errors import ConfigError, exit_on_user_error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m src.sweep_report", description=__doc__.splitlines()[0]
    )
    parser.add_argument("storage", help="SQLite file or RDB URL of the study")
    parser.add_argument("study", help="study name (hydra.sweeper.study_name)")
    parser.add_argument(
        "out_dir", nargs="?", help="where to write the report (default: logs/sweeps/<study>)"
    )
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        import optuna

        from src.sweep.report import write_report
        from src.sweep.study import mask_url, open_storage, storage_url

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if "://" not in args.storage and not Path(args.storage).is_file():
            raise ConfigError(f"storage {args.storage!r}: no such SQLite file")
        url = storage_url(args.storage, Path.cwd())
        storage = open_storage(url)
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        if args.study not in names:
            raise ConfigError(
                f"study {args.study!r} is not in {mask_url(url)}: it has {names or 'no studies'}"
            )
        study = optuna.load_study(study_name=args.study, storage=storage)
        out_dir = (
            Path(args.out_dir) if args.out_dir else PROJECT_ROOT / "logs" / "sweeps" / args.study
        )
        info = write_report(study, out_dir, storage_label=mask_url(url), plots=not args.no_plots)
        counts = ", ".join(f"{k} {v}" for k, v in info["counts"].items() if v)
        print(
            f"{args.study}: {counts}; best {info['monitor'] or 'value'} = {info['best_value']} -> {out_dir}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
