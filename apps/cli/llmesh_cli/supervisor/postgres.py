"""The PostgreSQL child of the production profile: prepare the cluster, then become it.

The supervisor runs ``python -m llmesh_cli.supervisor.postgres --data-dir D --port P
--database NAME ...``. On first run this creates the cluster (``initdb``: trust
authentication, listening on 127.0.0.1 only) and the databases; then it replaces itself
with the ``postgres`` server (same pid, so the supervisor's SIGTERM is PostgreSQL's
"smart" shutdown). The binaries, PostgreSQL 16 with pgvector, come from the ``pgserver``
package. PostgreSQL refuses to run as root: as root the cluster belongs to, and runs as,
the ``pgserver`` system user (created if missing, as ``pgserver`` itself does).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import stat
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from llmesh_cli.supervisor.child import die_with_parent

SYSTEM_USER = "pgserver"
_MARKER = "llmesh-databases"


def postgres_bin() -> Path | None:
    """The folder of the ``pgserver`` package's PostgreSQL binaries; None if not installed."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "pginstall" / "bin"
    return path if (path / "postgres").is_file() else None


def _become_system_user(data_dir: Path) -> None:
    """As root: own ``data_dir`` by, and switch to, the unprivileged PostgreSQL user."""
    import pwd

    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", SYSTEM_USER], check=True)
        entry = pwd.getpwnam(SYSTEM_USER)
    os.chown(data_dir, entry.pw_uid, entry.pw_gid)
    for parent in data_dir.parents:  # the user must be able to reach its folder
        mode = parent.stat().st_mode
        parent.chmod(mode | stat.S_IXGRP | stat.S_IXOTH)
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    os.environ.update(USER=SYSTEM_USER, LOGNAME=SYSTEM_USER, HOME=str(data_dir))
    die_with_parent()  # a change of credentials clears the parent-death signal


def prepare(bin_dir: Path, data_dir: Path, databases: Sequence[str]) -> None:
    """initdb on first run, then create ``databases`` once (single-user mode)."""
    if not (data_dir / "PG_VERSION").exists():
        subprocess.run(
            [
                str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres",
                "--auth=trust", "--encoding=UTF8", "--no-instructions",
            ],
            check=True,
        )  # fmt: skip
    marker = data_dir / _MARKER
    if marker.exists():
        return
    statements = "".join(f'CREATE DATABASE "{name}";\n' for name in databases)
    subprocess.run(
        [str(bin_dir / "postgres"), "--single", "-D", str(data_dir), "-F", "postgres"],
        input=statements.encode(),
        stdout=subprocess.DEVNULL,
        check=True,
    )
    marker.write_text("\n".join(databases) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmesh-postgres", description=__doc__)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database", action="append", default=[], help="create on first run")
    args = parser.parse_args(argv)
    bin_dir = postgres_bin()
    if bin_dir is None:
        print(
            "PostgreSQL binaries not found: install the pgserver package "
            "(pip install 'llmesh[production-local]', or make setup)",
            file=sys.stderr,
        )
        return 2
    data_dir: Path = args.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if os.geteuid() == 0:
        _become_system_user(data_dir)
    prepare(bin_dir, data_dir, args.database)
    sys.stdout.flush()
    server = str(bin_dir / "postgres")
    os.execv(
        server,
        [server, "-D", str(data_dir), "-p", str(args.port), "-h", "127.0.0.1", "-k", ""],
    )
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
