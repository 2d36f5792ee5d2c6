#!/usr/bin/env python3
"""Run the test suite: the one command a fresh checkout needs.

    python3 runtests.py [--postgres] [--no-venv] [pytest args...]

Unless --no-venv (or ASYNC_JOBS_NO_VENV=1), it first makes a virtualenv with
the Python running it (ASYNC_JOBS_VENV, default .venv), installs the package
with its test extras there (re-installing only when setup.cfg, pyproject.toml
or ASYNC_JOBS_DJANGO change), and re-runs itself inside it.

--postgres runs on PostgreSQL: the server in ASYNC_JOBS_DATABASE_URL if set,
else a throwaway one (test_projects/throwaway_postgres.py) that is deleted
afterwards. Without it the tests run on SQLite.

Environment: ASYNC_JOBS_VENV, ASYNC_JOBS_NO_VENV=1, ASYNC_JOBS_DJANGO (an
extra requirement such as "Django~=5.2.0"), ASYNC_JOBS_DATABASE_URL.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import NoReturn
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent
EXTRAS = ".[test,postgres]"
STAMP_NAME = ".async-jobs-install-stamp"
# Set when re-executed inside the venv, so the bootstrap never loops.
IN_VENV_MARKER = "_ASYNC_JOBS_RUNTESTS_IN_VENV"
DATABASE_URL = "ASYNC_JOBS_DATABASE_URL"


def say(message: str) -> None:
    """Progress goes to stderr, so stdout stays the tests' own."""
    print(f"{Path(sys.argv[0]).stem}: {message}", file=sys.stderr, flush=True)


def fail(message: str, output: str = "") -> NoReturn:
    if output:
        sys.stderr.write(output if output.endswith("\n") else output + "\n")
    say(f"error: {message}")
    sys.exit(1)


def venv_python(venv: Path) -> Path:
    if os.name == "nt":
        return venv / "Scripts" / "python.exe"
    return venv / "bin" / "python"


def install_stamp(django: str) -> str:
    """What the installed environment depends on; a change means re-install."""
    digest = hashlib.sha256()
    for name in ("setup.cfg", "pyproject.toml"):
        path = REPO / name
        digest.update(name.encode() + b"\0")
        digest.update(path.read_bytes() if path.exists() else b"<missing>")
        digest.update(b"\0")
    digest.update(f"{EXTRAS}\0{django}\0".encode())
    return digest.hexdigest()


def venv_matches_this_python(venv: Path) -> bool:
    """True when ``venv`` works and was made by this Python's version."""
    python = venv_python(venv)
    if not python.exists():
        return False
    try:
        out = subprocess.run(
            [str(python), "-c", "import platform; print(platform.python_version())"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return False
    return out == platform.python_version()


def run_quietly(cmd: list[str], what: str) -> None:
    """Run ``cmd``; its output is only shown if it fails."""
    result = subprocess.run(
        cmd,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if result.returncode != 0:
        fail(
            f"{what} failed (exit {result.returncode}): {' '.join(cmd)}", result.stdout
        )


def bootstrap(script: Path, argv: list[str]) -> None:
    """Make/refresh the venv and re-exec ``script`` inside it."""
    venv = Path(os.environ.get("ASYNC_JOBS_VENV") or REPO / ".venv")
    if not venv.is_absolute():
        venv = REPO / venv
    try:
        shown = venv.relative_to(REPO)
    except ValueError:
        shown = venv
    django = os.environ.get("ASYNC_JOBS_DJANGO", "").strip()

    if venv.exists() and not venv_matches_this_python(venv):
        if not (venv / "pyvenv.cfg").exists():
            fail(
                f"{venv} exists and is not a virtualenv; "
                "remove it or set ASYNC_JOBS_VENV"
            )
        say(f"{shown} was made by another Python; recreating it")
        shutil.rmtree(venv)
    if not venv.exists():
        say(f"creating {shown} (Python {platform.python_version()})...")
        result = subprocess.run(
            [sys.executable, "-m", "venv", str(venv)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            fail(
                f"could not create a virtualenv with {sys.executable} "
                "(Debian/Ubuntu: apt-get install python3-venv), or pass --no-venv",
                result.stdout + result.stderr,
            )

    python = venv_python(venv)
    stamp_file = venv / STAMP_NAME
    stamp = install_stamp(django)
    current = stamp_file.read_text().strip() if stamp_file.exists() else ""
    if current != stamp:
        requirements = ["-e", EXTRAS] + ([django] if django else [])
        say(f"installing {' '.join(requirements)} into {shown}...")
        stamp_file.unlink(missing_ok=True)  # an interrupted install re-installs
        run_quietly(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                *requirements,
            ],
            "pip install",
        )
        stamp_file.write_text(stamp + "\n")

    os.environ[IN_VENV_MARKER] = "1"
    if Path(sys.prefix).resolve() == venv.resolve():
        return  # already running inside it
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(str(python), [str(python), str(script.resolve()), *argv])


def use_venv(script: Path, argv: list[str], no_venv: bool = False) -> None:
    """Make sure ``script`` runs in the venv: returns there, or re-executes it.

    Shared by this script and demo.py. Skipped with ``no_venv`` or
    ASYNC_JOBS_NO_VENV=1 (run with the current Python as it is).
    """
    no_venv = no_venv or os.environ.get("ASYNC_JOBS_NO_VENV") == "1"
    if not no_venv and os.environ.get(IN_VENV_MARKER) != "1":
        bootstrap(script, argv)  # returns only if already inside the venv


def load_throwaway_postgres() -> ModuleType:
    """Import test_projects/throwaway_postgres.py without touching sys.path."""
    path = REPO / "test_projects" / "throwaway_postgres.py"
    spec = importlib.util.spec_from_file_location("throwaway_postgres", path)
    if spec is None or spec.loader is None:
        fail(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def database(postgres: bool) -> Iterator[str]:
    """Set ASYNC_JOBS_DATABASE_URL for the tests; yield a line saying which."""
    if not postgres:
        if os.environ.pop(DATABASE_URL, None):
            say(f"ignoring {DATABASE_URL} (pass --postgres to use it)")
        yield "SQLite"
        return
    url = os.environ.get(DATABASE_URL)
    if url:
        yield f"PostgreSQL at {where(url)} (from {DATABASE_URL})"
        return
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(load_throwaway_postgres().postgres_cluster())
        except RuntimeError as error:
            fail(str(error))
        os.environ[DATABASE_URL] = url
        yield f"PostgreSQL at {where(url)}"


def where(url: str) -> str:
    """host:port of a database URL, never its password."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}"


def versions() -> str:
    try:
        django = importlib.metadata.version("Django")
    except importlib.metadata.PackageNotFoundError:
        django = "not installed"
    return f"Python {platform.python_version()}, Django {django}"


def run_pytest(args: list[str]) -> int:
    """Run pytest and return its exit code, letting it finish on Ctrl-C.

    A terminal's Ctrl-C reaches pytest too (same process group); we wait for
    it to print its summary and exit, so the database is only torn down once
    nothing uses it. SIGTERM is passed on to pytest.
    """
    proc = subprocess.Popen([sys.executable, "-m", "pytest", *args], cwd=REPO)

    def forward_sigterm(signum: int, _frame: object) -> None:
        proc.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward_sigterm)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        try:
            proc.wait(timeout=10)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            proc.kill()
            proc.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 128 - code if code < 0 else code  # killed by a signal: the shell's 128+N


def main() -> int:
    argv = sys.argv[1:]
    # Our own options are pulled out; everything else is pytest's.
    postgres = "--postgres" in argv
    rest = [arg for arg in argv if arg not in ("--postgres", "--no-venv")]
    use_venv(Path(__file__), argv, no_venv="--no-venv" in argv)

    with database(postgres) as which:
        print(f"Running tests on {which} ({versions()})", flush=True)
        return run_pytest(rest)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        say("interrupted")
        sys.exit(130)
