"""A throwaway PostgreSQL server on loopback (Debian's `postgresql` package binaries), for the
many-machines sweep tests and the storage benchmark. As root it runs as the package's `postgres`
user (PostgreSQL refuses root). Everything lives in one temporary directory, removed on exit."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

PASSWORD = "s3cret-pw"


def server_binaries() -> Path | None:
    """The newest installed PostgreSQL's bin dir, or None."""
    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(initdb[-1]).parent if initdb else None


@contextlib.contextmanager
def local_postgres(max_connections: int = 50) -> Iterator[str]:
    """Start a server, yield its URL (user ftlab, database postgres), stop and delete it."""
    bindir = server_binaries()
    if bindir is None:
        raise RuntimeError(
            "PostgreSQL server binaries missing: apt-get install postgresql (.ci/run does)"
        )
    root = Path(tempfile.mkdtemp(prefix="ftlab-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    pwfile = root / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if prefix:
        shutil.chown(pwfile, "postgres", "postgres")
    data = root / "data"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        subprocess.run(
            [*prefix, str(bindir / "initdb"), "-D", str(data), "-U", "ftlab"]
            + [f"--pwfile={pwfile}", "--auth=scram-sha-256"],
            check=True,
            capture_output=True,
        )
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {port} -k {root} "
            f"-c max_connections={max_connections}"
        )
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-o", opts]
            + ["-l", str(root / "server.log"), "-w", "start"],
            check=True,
            capture_output=True,
        )
        yield f"postgresql://ftlab:{PASSWORD}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)
