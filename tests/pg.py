"""A private PostgreSQL cluster for the tests: initdb into a temporary directory, started with pg_ctl on a
free loopback port, trust authentication, stopped (and removed) at the end. The Debian packages (`apt-get
install postgresql`, what .ci/run installs) put the binaries in /usr/lib/postgresql/<major>/bin, off PATH.
PostgreSQL refuses to run as root: as root, the cluster runs as the Debian package's `postgres` user,
in a directory under /tmp it owns (pytest's tmp_path is root's, mode 0700, which that user cannot enter)."""

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


def pg_bindir() -> Path | None:
    """The newest installed PostgreSQL's binaries (Debian's layout first, then PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgCluster:
    """One running cluster; `new_database()` gives each Dagster instance a database of its own."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.port = free_port()
        self.user = None
        if os.geteuid() == 0:
            try:
                self.user = pwd.getpwnam("postgres")
            except KeyError as e:
                raise RuntimeError(
                    "running as root and there is no 'postgres' user to run PostgreSQL as"
                ) from e
        self.root = Path(tempfile.mkdtemp(prefix="nq-pg-"))
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self.data = self.root / "data"
        self._names = itertools.count()

    def _run(self, *args: str, timeout: float = 120) -> None:
        kw = {"user": self.user.pw_uid, "group": self.user.pw_gid} if self.user is not None else {}
        res = subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={"PATH": os.environ.get("PATH", ""), "LC_ALL": "C", "HOME": str(self.root)},
            **kw,
        )
        if res.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({res.returncode}): {res.stderr[-2000:]}")

    def start(self) -> PgCluster:
        # fsync off: a test cluster's durability is not under test (Dagster's is the database's own), and on
        # a shared disk fsync dominates schema creation
        self._run("initdb", "-D", str(self.data), "-U", "nq", "--auth=trust", "-E", "UTF8", "--no-sync")
        self.resume()
        return self

    def resume(self) -> None:
        """Start the server (again, after `pause`) on the same port and data."""
        opts = f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c max_connections=200"
        self._run(
            "pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "server.log"), "-w", "start"
        )

    def pause(self) -> None:
        """Stop the server as a crash would (`-m immediate`), keeping its data: the store is down."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://nq@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg2

        name = f"dagster_{os.getpid()}_{next(self._names)}"
        conn = psycopg2.connect(self.url())
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start_or_reason() -> tuple[PgCluster | None, str]:
    """A started cluster, or None and why not (the tests that need it skip with that reason)."""
    bindir = pg_bindir()
    if bindir is None:
        return None, "PostgreSQL is not installed (apt-get install -y postgresql; .ci/run does it)"
    try:
        import psycopg2  # noqa: F401  (dagster-postgres' driver, from the k8s extra)
    except ImportError:
        return None, "psycopg2 is not installed (pip install -e '.[k8s]')"
    try:
        return PgCluster(bindir).start(), ""
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        return None, f"PostgreSQL could not be started: {e}"


def storage_overrides(url: str) -> dict:
    """The instance's run, event log and schedule storage in the database at `url`, in the form
    k8s/dagster.yaml deploys (postgres_db: host, port, database, and the psycopg2 scheme, because SQLAlchemy
    2.1 maps a bare `postgresql://` to psycopg 3, which dagster-postgres does not install)."""
    from urllib.parse import urlsplit

    u = urlsplit(url)
    db = {
        "username": u.username,
        "password": "unused",  # trust authentication on loopback
        "hostname": u.hostname,
        "port": u.port,
        "db_name": u.path.lstrip("/"),
        "scheme": "postgresql+psycopg2",
    }
    return {"storage": {"postgres": {"postgres_db": db}}}
