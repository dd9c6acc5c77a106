"""A real PostgreSQL server for the tests, started once per test session (fixture ``pg_server``).

Debian's package (``postgresql``, installed by ``.ci/run`` where missing) puts ``initdb``, ``pg_ctl`` and
``postgres`` in ``/usr/lib/postgresql/<version>/bin``; elsewhere they are found on ``PATH``. The server:

- lives in a fresh temporary folder (data directory, unix socket, log), removed at teardown;
- listens on 127.0.0.1 on a free port, with password authentication (scram-sha-256) for every connection;
- runs as the ``postgres`` system user when the tests run as root (PostgreSQL refuses to run as root; CI runs
  as root), through ``runuser``, in a folder that user owns;
- is tuned for throw-away data (no fsync): the tests check behaviour, not durability.

Test modules use it with ``from pg_server import pg_server  # noqa: F401`` and ask it for a database of their
own (:meth:`PgServer.create_database`). The fixture skips, with the reason, only when no server binary exists
or the server cannot start; anything that goes wrong after it started fails the test.
"""
from __future__ import annotations

import dataclasses
import os
import pwd
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

SUPERUSER = "toolkit_test"
START_TIMEOUT_SECONDS = 60


class ServerUnavailable(Exception):
    """No PostgreSQL server can run here (the reason says why)."""


@dataclasses.dataclass
class PgServer:
    """A running server: where it listens and how to log in (the password is random, per session)."""

    bin_dir: Path
    base: Path  # the temporary folder: data/, the socket, server.log
    port: int
    user: str
    password: str  # holds "/", "+" and "=" like base64-made passwords, which URLs carry unescaped
    run_as: str | None  # the system user running the server (root's tests), else None
    host: str = "127.0.0.1"

    @property
    def secret(self) -> str:
        """The random core of the password: found in a file or an output, the password leaked (raw or
        URL-escaped)."""
        return self.password.split("/")[1].split("+")[0]

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def log_file(self) -> Path:
        return self.base / "server.log"

    def url(self, database: str, scheme: str = "postgresql+psycopg", password: bool = True) -> str:
        """A SQLAlchemy URL of ``database`` on this server (without the password when ``password`` is False)."""
        auth = f"{self.user}:{self.password}" if password else self.user
        return f"{scheme}://{auth}@{self.host}:{self.port}/{database}"

    def connect(self, database: str = "postgres"):  # noqa: ANN201 (psycopg is imported lazily)
        import psycopg

        return psycopg.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                               dbname=database, autocommit=True, connect_timeout=10)

    def create_database(self, name: str) -> str:
        """Create an empty database (dropping one of that name first) and return its URL."""
        from psycopg import sql

        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"database name {name!r}: use lower-case letters, digits and _")
        with self.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def pg_ctl(self, *args: str, timeout: float = START_TIMEOUT_SECONDS) -> subprocess.CompletedProcess[str]:
        return _run(self.run_as, [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args], self.base,
                    timeout)

    def stop(self) -> None:
        """Stop the server (immediate shutdown: the data is thrown away) and remove its folder."""
        try:
            if (self.data_dir / "postmaster.pid").exists():
                self.pg_ctl("stop", "-m", "immediate", "-w")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


def find_bin_dir() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres: on PATH, else the newest Debian/Ubuntu install."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).parent] if on_path else []
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        versions = [d for d in debian.iterdir() if d.name.isdigit()]
        candidates += [d / "bin" for d in sorted(versions, key=lambda d: int(d.name), reverse=True)]
    for folder in candidates:
        if all(os.access(folder / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(run_as: str | None, cmd: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    if run_as:
        cmd = ["runuser", "-u", run_as, "--", *cmd]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def _server_user() -> str | None:
    """None when not root; else the system user to run the server as (it must exist, and runuser too)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise ServerUnavailable("the tests run as root, which PostgreSQL refuses, and there is no 'postgres' "
                                "system user to run the server as") from None
    if shutil.which("runuser") is None:
        raise ServerUnavailable("the tests run as root and runuser (util-linux) is missing to run PostgreSQL as "
                                "the 'postgres' user")
    return "postgres"


def _tail(text: str, lines: int = 5) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def start_server() -> PgServer:
    """initdb a fresh cluster in a temporary folder and start it; ServerUnavailable when that is impossible."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise ServerUnavailable("no PostgreSQL server binaries (initdb, pg_ctl, postgres) on PATH or in "
                                "/usr/lib/postgresql/*/bin; install Debian's postgresql package (.ci/run does)")
    run_as = _server_user()
    base = Path(tempfile.mkdtemp(prefix="toolkit_pg_"))  # /tmp itself: pytest's tmp folders are root-only
    server = PgServer(bin_dir=bin_dir, base=base, port=_free_port(), user=SUPERUSER,
                      password=f"pg/{secrets.token_hex(12)}+T=", run_as=run_as)
    try:
        pw_file = base / "pwfile"
        pw_file.write_text(server.password + "\n")
        pw_file.chmod(0o600)
        if run_as:
            entry = pwd.getpwnam(run_as)
            for path in (base, pw_file):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        init = _run(run_as, [str(bin_dir / "initdb"), "-D", str(server.data_dir), "-U", SUPERUSER,
                             f"--pwfile={pw_file}", "--auth=scram-sha-256", "-E", "UTF8", "--locale=C",
                             "--no-sync", "--no-instructions"], base, START_TIMEOUT_SECONDS)
        pw_file.unlink()
        if init.returncode != 0:
            raise ServerUnavailable(f"initdb failed (exit {init.returncode}): {_tail(init.stderr or init.stdout)}")
        options = " ".join(shlex.quote(o) for o in (
            "-h", server.host, "-p", str(server.port), "-k", str(base), "-c", "fsync=off",
            "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=60"))
        start = server.pg_ctl("start", "-w", "-t", str(START_TIMEOUT_SECONDS), "-l", str(server.log_file),
                              "-o", options, timeout=START_TIMEOUT_SECONDS + 10)
        if start.returncode != 0:
            log = server.log_file.read_text(errors="replace") if server.log_file.exists() else ""
            raise ServerUnavailable(f"the PostgreSQL server did not start (pg_ctl exit {start.returncode}): "
                                    f"{_tail(log or start.stderr or start.stdout)}")
    except (ServerUnavailable, OSError, subprocess.TimeoutExpired) as exc:
        server.stop()
        if isinstance(exc, ServerUnavailable):
            raise
        raise ServerUnavailable(f"the PostgreSQL server could not be set up: {exc}") from exc
    return server


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A PostgreSQL server for the whole session (skipped, with the reason, where none can run)."""
    try:
        server = start_server()
    except ServerUnavailable as exc:
        pytest.skip(f"PostgreSQL: {exc}")
    try:
        yield server
    finally:
        server.stop()
