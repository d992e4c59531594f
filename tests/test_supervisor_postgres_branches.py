"""In-process tests of the PostgreSQL child's preparation (llmesh_cli/supervisor/postgres.py).

The PostgreSQL binaries are replaced by small shell scripts that record how they were
called; ``os.execv`` and the root-only credential calls are replaced by recorders, so
every branch (first run, second run, missing binaries, run as root, user missing) runs
here without a server.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import stat
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from llmesh_cli.supervisor import postgres


def _fake_bin(tmp_path: Path) -> Path:
    """initdb writes PG_VERSION; postgres (single-user) logs its args and its stdin."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    initdb = bin_dir / "initdb"
    initdb.write_text(
        f'#!/bin/sh\necho "initdb $*" >> "{log}"\n'
        'while [ $# -gt 0 ]; do [ "$1" = -D ] && echo 16 > "$2/PG_VERSION"; shift; done\n'
    )
    server = bin_dir / "postgres"
    server.write_text(f'#!/bin/sh\necho "postgres $*" >> "{log}"\ncat >> "{log}"\n')
    for script in (initdb, server):
        script.chmod(0o755)
    return bin_dir


def _calls(tmp_path: Path) -> str:
    log = tmp_path / "calls.log"
    return log.read_text() if log.exists() else ""


def test_prepare_first_run_initdb_then_creates_each_database(tmp_path: Path) -> None:
    bin_dir, data = _fake_bin(tmp_path), tmp_path / "data"
    data.mkdir()
    postgres.prepare(bin_dir, data, ["llmesh_memory", "llmesh_registry"])
    calls = _calls(tmp_path)
    assert f"initdb -D {data} -U postgres --auth=trust" in calls
    assert f"postgres --single -D {data} -F postgres" in calls
    assert 'CREATE DATABASE "llmesh_memory";\nCREATE DATABASE "llmesh_registry";' in calls
    assert (data / "llmesh-databases").read_text() == "llmesh_memory\nllmesh_registry\n"


def test_prepare_second_run_touches_nothing(tmp_path: Path) -> None:
    bin_dir, data = _fake_bin(tmp_path), tmp_path / "data"
    data.mkdir()
    postgres.prepare(bin_dir, data, ["a"])
    (tmp_path / "calls.log").unlink()
    postgres.prepare(bin_dir, data, ["a", "b"])
    assert _calls(tmp_path) == ""  # no initdb, no CREATE DATABASE
    assert (data / "llmesh-databases").read_text() == "a\n"


def test_prepare_existing_cluster_without_marker_creates_databases_only(tmp_path: Path) -> None:
    bin_dir, data = _fake_bin(tmp_path), tmp_path / "data"
    data.mkdir()
    (data / "PG_VERSION").write_text("16\n")
    postgres.prepare(bin_dir, data, ["only"])
    calls = _calls(tmp_path)
    assert "initdb" not in calls
    assert 'CREATE DATABASE "only";' in calls


def test_prepare_failure_leaves_no_marker(tmp_path: Path) -> None:
    bin_dir, data = _fake_bin(tmp_path), tmp_path / "data"
    data.mkdir()
    (data / "PG_VERSION").write_text("16\n")
    (bin_dir / "postgres").write_text("#!/bin/sh\nexit 3\n")
    with pytest.raises(subprocess.CalledProcessError):
        postgres.prepare(bin_dir, data, ["x"])
    assert not (data / "llmesh-databases").exists()  # the next start tries again


def test_postgres_bin_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert postgres.postgres_bin() is None


def test_postgres_bin_without_origin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: SimpleNamespace(origin=None))
    assert postgres.postgres_bin() is None


def test_postgres_bin_package_without_binaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    origin = tmp_path / "pgserver" / "__init__.py"
    origin.parent.mkdir()
    origin.write_text("")
    spec = SimpleNamespace(origin=str(origin))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    assert postgres.postgres_bin() is None
    bin_dir = origin.parent / "pginstall" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "postgres").write_text("")
    assert postgres.postgres_bin() == bin_dir


def test_main_without_binaries_exits_2_and_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(postgres, "postgres_bin", lambda: None)
    code = postgres.main(["--data-dir", str(tmp_path / "d"), "--port", "5999"])
    assert code == 2
    assert "pip install 'llmesh[production-local]'" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def _record_exec(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str]]]:
    execs: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(postgres.os, "execv", lambda path, args: execs.append((path, list(args))))
    return execs


def test_main_prepares_then_execs_the_server_on_loopback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = _fake_bin(tmp_path)
    monkeypatch.setattr(postgres, "postgres_bin", lambda: bin_dir)
    monkeypatch.setattr(postgres.os, "geteuid", lambda: 1000)
    become: list[Path] = []
    monkeypatch.setattr(postgres, "_become_system_user", become.append)
    execs = _record_exec(monkeypatch)
    data = tmp_path / "nested" / "data"
    argv = ["--data-dir", str(data), "--port", "5999", "--database", "a", "--database", "b"]
    assert postgres.main(argv) == 0
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert (data / "llmesh-databases").read_text() == "a\nb\n"
    server = str(bin_dir / "postgres")
    assert execs == [(server, [server, "-D", str(data), "-p", "5999", "-h", "127.0.0.1", "-k", ""])]
    assert become == []  # not root


def test_main_as_root_switches_user_before_preparing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = _fake_bin(tmp_path)
    monkeypatch.setattr(postgres, "postgres_bin", lambda: bin_dir)
    monkeypatch.setattr(postgres.os, "geteuid", lambda: 0)
    order: list[str] = []
    monkeypatch.setattr(postgres, "_become_system_user", lambda d: order.append(f"become {d}"))
    real_prepare = postgres.prepare

    def prepare(b: Path, d: Path, dbs: Any) -> None:
        order.append("prepare")
        real_prepare(b, d, dbs)

    monkeypatch.setattr(postgres, "prepare", prepare)
    _record_exec(monkeypatch)
    data = tmp_path / "data"
    assert postgres.main(["--data-dir", str(data), "--port", "1"]) == 0
    assert order == [f"become {data}", "prepare"]


class _Creds:
    """Records the root-only calls of ``_become_system_user``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, root: Path, *, exists: bool) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.chmodded: list[Path] = []
        self.exists = exists
        entry = SimpleNamespace(pw_uid=4242, pw_gid=4343)

        def getpwnam(name: str) -> Any:
            self.calls.append(("getpwnam", name))
            if not self.exists:
                raise KeyError(name)
            return entry

        def run(args: list[str], check: bool) -> None:
            self.calls.append(("run", tuple(args), check))
            self.exists = True

        monkeypatch.setattr(pwd, "getpwnam", getpwnam)
        monkeypatch.setattr(postgres.subprocess, "run", run)
        monkeypatch.setattr(
            postgres.os, "chown", lambda p, u, g: self.calls.append(("chown", u, g))
        )
        monkeypatch.setattr(postgres.os, "setgid", lambda g: self.calls.append(("setgid", g)))
        monkeypatch.setattr(postgres.os, "setuid", lambda u: self.calls.append(("setuid", u)))
        monkeypatch.setattr(postgres, "die_with_parent", lambda: self.calls.append(("pdeath",)))
        real_chmod = Path.chmod

        def chmod(path: Path, mode: int) -> None:  # only inside the test's folder
            self.chmodded.append(path)
            if path.is_relative_to(root):
                real_chmod(path, mode)

        monkeypatch.setattr(Path, "chmod", chmod)
        for key in ("USER", "LOGNAME", "HOME"):
            monkeypatch.setenv(key, "before")


def test_become_system_user_existing_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "a" / "data"
    data.mkdir(parents=True)
    (tmp_path / "a").chmod(0o700)
    creds = _Creds(monkeypatch, tmp_path, exists=True)
    postgres._become_system_user(data)
    names = [c[0] for c in creds.calls]
    assert "run" not in names  # no useradd
    # group before user (after setuid, setgid is no longer allowed), then the death signal
    assert names[-4:] == ["chown", "setgid", "setuid", "pdeath"]
    assert ("chown", 4242, 4343) in creds.calls
    mode = (tmp_path / "a").stat().st_mode
    assert mode & stat.S_IXGRP and mode & stat.S_IXOTH  # the user can reach its folder
    assert creds.chmodded == list(data.parents)  # every folder above, up to /
    assert os.environ["USER"] == os.environ["LOGNAME"] == "pgserver"
    assert os.environ["HOME"] == str(data)


def test_become_system_user_creates_a_missing_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    creds = _Creds(monkeypatch, tmp_path, exists=False)
    postgres._become_system_user(data)
    assert ("run", ("useradd", "--system", "--no-create-home", "pgserver"), True) in creds.calls
    assert [c for c in creds.calls if c[0] == "getpwnam"] == [("getpwnam", "pgserver")] * 2
    assert ("setuid", 4242) in creds.calls
