"""A throwaway PostgreSQL server on loopback for storage tests.

The cluster lives in a fresh temporary folder and is stopped afterwards. Where the
server binaries are missing (`.ci/run` installs Debian's `postgresql`), the tests that
need it are skipped with that reason.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def server_bindir() -> Path | None:
    """Folder holding initdb and pg_ctl, newest version first."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server and yield a SQLAlchemy URL to an empty database on it."""
    bindir = server_bindir()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found")
    # /tmp/pytest-of-root is private to root, so the cluster gets its own folder that
    # the `postgres` account (initdb refuses to run as root) can enter.
    base = Path(tempfile.mkdtemp(prefix="tlsearch-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(base, user="postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = base / "data", _free_port()

    def run(*args: str) -> None:
        subprocess.run(as_user + list(args), check=True, capture_output=True, timeout=120)

    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "tlsearch", "--auth=trust",
            "-E", "UTF8", "--no-sync")
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-w",
            "-o", f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off "
                  "-c max_connections=200", "start")
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "tlsearch",
            "tlsearch")
        # The URL exactly as the README writes it: no driver named (see make_storage).
        yield f"postgresql://tlsearch@127.0.0.1:{port}/tlsearch"
    finally:
        subprocess.run(as_user + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                                  "stop"], capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)
