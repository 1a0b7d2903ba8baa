"""A real PostgreSQL for the tests, in a temporary directory on a free loopback port (nothing mocked).

``postgres_url`` is a database in one cluster for the whole session
(``postgres``: a test that needs a database of its own makes one with
``create_database``);
``PostgresProcess`` starts a private cluster for tests that stop it mid-test
and start it again (``stop()``, ``start()``).

The cluster is Debian's ``postgresql`` (``/usr/lib/postgresql/<version>/bin``):
``initdb`` with trust authentication, listening on 127.0.0.1 only, its unix
socket in the temporary directory. PostgreSQL refuses to run as root, so as
root the cluster runs as the system user ``pixelgate-test`` (created when
missing; ``nobody`` when it cannot be), through ``runuser``. Durability is
off (``fsync``, ``synchronous_commit``, ``full_page_writes``): a clean stop
still writes everything out, and nothing here must survive a power cut.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import free_port

__all__ = ["PostgresProcess", "postgres", "postgres_url"]

_USER = "pixelgate-test"
_SUPERUSER = "postgres"
_DATABASE = "pixelgate_test"


def _bindir() -> Path:
    """The newest installed PostgreSQL's binaries (Debian keeps them off PATH)."""
    def version(path: str) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", Path(path).parent.name))

    candidates = [c for c in glob.glob("/usr/lib/postgresql/*/bin") if all(os.access(f"{c}/{b}", os.X_OK) for b in ("initdb", "pg_ctl", "postgres"))]
    if candidates:
        return Path(max(candidates, key=version))
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb") and shutil.which("postgres"):
        return Path(found).parent
    pytest.fail("PostgreSQL is not installed (initdb, pg_ctl, postgres under /usr/lib/postgresql/*/bin): install the Debian package postgresql")


def _run_as() -> str | None:
    """The unprivileged user to run the server as, when we are root (None otherwise)."""
    if os.geteuid() != 0:
        return None
    for user in (_USER, "nobody"):
        try:
            pwd.getpwnam(user)
            return user
        except KeyError:
            if user == _USER:
                subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", _USER],
                               capture_output=True, check=False)
                try:
                    pwd.getpwnam(_USER)
                    return _USER
                except KeyError:
                    continue
    pytest.fail("running as root, and no unprivileged user to run PostgreSQL as (useradd failed, no `nobody`)")


class PostgresProcess:
    """A PostgreSQL cluster of its own, bound to 127.0.0.1, with ``database`` created in it."""

    def __init__(self, port: int | None = None, database: str = _DATABASE) -> None:
        self._bin = _bindir()
        self._user = _run_as()
        self.port = port or free_port()
        self._tmp = Path(tempfile.mkdtemp(prefix="pixelgate-pg-"))
        self._data = self._tmp / "data"
        self._sockets = self._tmp / "sockets"
        self._log = self._tmp / "postgres.log"
        self._sockets.mkdir()
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            for path in (self._tmp, self._sockets):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        try:
            self._run("initdb", "-D", str(self._data), "-U", _SUPERUSER, "--auth=trust", "--encoding=UTF8",
                      "--locale=C", "--no-sync", "--no-instructions")
            self.start()
            self.create_database(database)
        except BaseException:
            self.destroy()
            raise
        self.database = database
        self.url = self.url_for(database)

    def url_for(self, database: str) -> str:
        return f"postgresql+asyncpg://{_SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _run(self, binary: str, *args: str, timeout: float = 60) -> None:
        command = [str(self._bin / binary), *args]
        if self._user is not None:
            command = ["runuser", "-u", self._user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self._tmp, check=False)
        if done.returncode != 0:
            log = self._log.read_text(errors="replace")[-2000:] if self._log.exists() else ""
            raise RuntimeError(f"{binary} {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}\n{log}")

    def start(self) -> None:
        options = " ".join([
            "-c listen_addresses=127.0.0.1", f"-p {self.port}", f"-c unix_socket_directories={self._sockets}",
            "-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off", "-c max_connections=200",
        ])
        self._run("pg_ctl", "-D", str(self._data), "-l", str(self._log), "-o", options, "-w", "-t", "30", "start")
        self._wait_ready()

    def _wait_ready(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.02)
        raise TimeoutError(f"PostgreSQL on port {self.port} did not listen within {timeout} s")

    def stop(self) -> None:
        """A fast shutdown: sessions are ended at once, committed data written out."""
        if (self._data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self._data), "-m", "fast", "-w", "-t", "30", "stop")

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its URL."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", _SUPERUSER, name)
        return self.url_for(name)

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresProcess]:
    """The session's cluster (for ``create_database``); never stopped by a test."""
    server = PostgresProcess()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def postgres_url(postgres: PostgresProcess) -> str:
    """The session cluster's database, as a ``postgresql+asyncpg://`` URL."""
    return postgres.url
