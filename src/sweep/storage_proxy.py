"""Optuna's gRPC storage proxy in front of a study's database, for sweeps with many workers.

    python -m src.sweep.storage_proxy env:FTLAB_STORAGE_URL --host 0.0.0.0 --port 13000
    python -m src.train -m hparams_search=sentiment hydra.sweeper.storage=env:FTLAB_STORAGE_URL \\
        hydra.sweeper.storage_proxy=proxyhost:13000

The proxy holds the database connections and Optuna's trial cache; workers and trials speak gRPC
to it. Through it goes the traffic that grows with the workers: every ask (the sampler reads every
trial of the study), every report and pruning decision, every tell. Not through it (Optuna's proxy
has no heartbeat API): each sweep command's heartbeats, its stale-trial check and the trial-budget
lock, on one database connection per sweep command, opened only while used.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from src.errors import ConfigError, exit_on_user_error

log = logging.getLogger(__name__)
DEFAULT_PORT = 13000
READY_TIMEOUT_S = 10.0


def parse_address(address: str, what: str = "hydra.sweeper.storage_proxy") -> tuple[str, int]:
    """`HOST:PORT` (or `:PORT`, localhost) -> (host, port); a one-line error otherwise."""
    host, sep, port = str(address).rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"{what}={address!r} is invalid: give HOST:PORT of a running "
            f"`python -m src.sweep.storage_proxy` (e.g. dbhost:{DEFAULT_PORT})"
        )
    return host or "localhost", int(port)


def proxy_storage(address: str, what: str = "hydra.sweeper.storage_proxy") -> Any:
    """A client of the proxy at `address`, once it answers (a one-line error when it does not)."""
    from optuna.storages import GrpcStorageProxy

    from src.sweep.study import quiet_experimental

    host, port = parse_address(address, what)
    with quiet_experimental():
        storage = GrpcStorageProxy(host=host, port=port)
    try:
        storage.wait_server_ready(timeout=READY_TIMEOUT_S)
    except Exception:
        raise ConfigError(
            f"{what}={address!r}: no storage proxy answers there within {READY_TIMEOUT_S:g} s "
            "(start one with `python -m src.sweep.storage_proxy STORAGE --host ... --port ...`)"
        ) from None
    return storage


def serve(url: str, host: str = "0.0.0.0", port: int = DEFAULT_PORT) -> None:
    """Serve the storage at `url` until killed (Optuna's server: a pool of 10 threads)."""
    import optuna
    from optuna.storages import get_storage, run_grpc_proxy_server

    from src.sweep.study import open_storage, quiet_experimental

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with quiet_experimental():
        # get_storage adds Optuna's trial cache to the RDB storage (its docs ask for it here)
        run_grpc_proxy_server(get_storage(open_storage(url)), host=host, port=port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m src.sweep.storage_proxy", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "storage",
        help="the study's database: an RDB URL without a password, env:NAME or file:PATH holding "
        "the URL, or a SQLite file",
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    with exit_on_user_error():
        from src.sweep.study import mask_url, storage_url

        url = storage_url(args.storage, Path.cwd(), what="storage")
        parse_address(f"{args.host}:{args.port}", what="--host/--port")
        log.info("storage proxy for %s on %s:%d", mask_url(url), args.host, args.port)
        serve(url, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
