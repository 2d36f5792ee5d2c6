"""A throwaway PostgreSQL server for the test suite and the benchmarks.

``postgres_cluster()`` runs ``initdb`` in a fresh temporary directory, starts a
server on a free port of 127.0.0.1 only, yields its URL, and on the way out
(normal exit, exception or Ctrl-C) stops it and deletes the directory. Nothing
is left behind and no system-wide PostgreSQL service is needed or touched:
only the server binaries (Debian: ``apt-get install postgresql``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["find_bindir", "postgres_cluster"]

HOST = "127.0.0.1"
# initdb refuses to run as root, so as root we run the server as this user
# (the Debian/Ubuntu postgresql packages create it).
SYSTEM_USER = "postgres"
SUPERUSER = "postgres"

_INSTALL_HINT = (
    "no PostgreSQL server binaries (initdb, postgres) found: install them "
    "(Debian/Ubuntu: apt-get install postgresql), or point the tests at an "
    "existing server with ASYNC_JOBS_DATABASE_URL=postgres://USER@HOST:PORT/DB"
)


def find_bindir() -> Path:
    """Return the directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    ``pg_config --bindir`` first (it names the installation the user chose);
    Debian keeps server binaries out of PATH, under /usr/lib/postgresql/N/bin,
    and pg_config may belong to a client-only libpq, hence the fallback.
    """
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True
        ).stdout.strip()
        bindir = Path(out)
        if all((bindir / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return bindir

    def version(bindir: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", bindir.parent.name))

    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/postgres")]
    for bindir in sorted(found, key=version, reverse=True):
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    raise RuntimeError(_INSTALL_HINT)


def _free_port() -> int:
    """Ask the kernel for a free port on 127.0.0.1 (racy, hence the retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _as_server_user() -> list[str]:
    """Command prefix that runs a PostgreSQL tool as a user it accepts.

    initdb/postgres refuse root; as root we switch to the ``postgres`` user.
    """
    if os.geteuid() != 0:
        return []
    if shutil.which("runuser") is None:
        raise RuntimeError(
            "running as root needs runuser (util-linux) to drop to the postgres user"
        )
    return ["runuser", "-u", SYSTEM_USER, "--"]


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore Ctrl-C while cleaning up, so a second one can't orphan the server.

    Ignored signals stay ignored across exec, so pg_ctl is shielded as well.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _run_logged(cmd: list[str], log: Path, cwd: Path) -> int:
    """Run ``cmd`` with its output appended to ``log``; return the exit code."""
    with log.open("ab") as out:
        return subprocess.run(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=cwd
        ).returncode


@contextlib.contextmanager
def postgres_cluster(*, durable: bool = False) -> Iterator[str]:
    """Run a private PostgreSQL server for the duration of the ``with`` block.

    Yields ``postgres://postgres@127.0.0.1:PORT/postgres`` (trust auth, so no
    password). ``durable=False`` turns fsync and friends off: a crash can lose
    data, which doesn't matter for a server deleted afterwards, and the tests
    run much faster. Benchmarks pass ``durable=True`` to measure real commits.
    """
    bindir = find_bindir()
    prefix = _as_server_user()
    # Short prefix: the Unix socket path (DIR/.s.PGSQL.PORT) must stay < 108 bytes.
    tmp = Path(tempfile.mkdtemp(prefix="ajpg-"))
    data = tmp / "data"
    initdb_log = tmp / "initdb.log"
    ctl_log = tmp / "pg_ctl.log"
    server_log = tmp / "log"
    try:
        if prefix:
            try:
                user = pwd.getpwnam(SYSTEM_USER)
            except KeyError:
                raise RuntimeError(
                    f"running as root: initdb needs the unprivileged {SYSTEM_USER!r} "
                    "user, which does not exist (apt-get install postgresql creates it)"
                ) from None
            os.chown(tmp, user.pw_uid, user.pw_gid)
            for path in (initdb_log, ctl_log, server_log):
                path.touch()
                os.chown(path, user.pw_uid, user.pw_gid)

        initdb = [
            *prefix,
            str(bindir / "initdb"),
            "-D",
            str(data),
            "--auth=trust",
            "-U",
            SUPERUSER,
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",  # throwaway: don't wait for the disk
        ]
        if _run_logged(initdb, initdb_log, cwd=tmp) != 0:
            raise RuntimeError(f"initdb failed:\n{_read(initdb_log)}")

        settings = {
            "listen_addresses": HOST,
            "unix_socket_directories": str(tmp),
            "max_connections": "200",
        }
        if not durable:
            settings.update(
                fsync="off", synchronous_commit="off", full_page_writes="off"
            )

        for _attempt in range(5):
            port = _free_port()
            # pg_ctl hands -o to /bin/sh, hence the quoting.
            options = " ".join(
                [f"-p {port}"]
                + [f"-c {shlex.quote(f'{k}={v}')}" for k, v in settings.items()]
            )
            start = [
                *prefix,
                str(bindir / "pg_ctl"),
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                str(data),
                "-l",
                str(server_log),
                "-o",
                options,
            ]
            server_log.write_text("")  # keep ownership, drop the last attempt's errors
            if _run_logged(start, ctl_log, cwd=tmp) == 0:
                break
            if "could not bind" not in _read(server_log):
                raise RuntimeError(
                    f"PostgreSQL did not start:\n{_read(ctl_log)}\n{_read(server_log)}"
                )
        else:
            raise RuntimeError(f"PostgreSQL found no free port:\n{_read(server_log)}")

        yield f"postgres://{SUPERUSER}@{HOST}:{port}/postgres"
    finally:
        with _sigint_ignored():
            if (data / "postmaster.pid").exists():
                # Immediate: no checkpoint, nothing worth keeping.
                stop = [
                    *prefix,
                    str(bindir / "pg_ctl"),
                    "stop",
                    "-m",
                    "immediate",
                    "-D",
                    str(data),
                ]
                _run_logged(stop, ctl_log, cwd=tmp)
            shutil.rmtree(tmp, ignore_errors=True)
