"""A function typed at ``manage.py shell`` can't be a job, and says why.

The shell's namespaces differ: ``shell -c`` and piped input run in the shell
command module's globals, its interactive prompt in a dict with no
``__name__``. Both must get the "defined in __main__" message, not the
allow-list's, which would send the user to widen ``ALLOWED_MODULES``.
"""

import os
import pty
import select
import subprocess
import sys
import time

import pytest

from .conftest import PROJECT_DIR, worker_env

pytestmark = pytest.mark.django_db(transaction=True)

SESSION = (
    "from async_jobs import schedule\n"
    "def greet(name):\n"
    "    return name\n"
    "\n"
    "try:\n"
    "    schedule(greet, args=['Ada'])\n"
    "except Exception as exc:\n"
    "    print('REFUSED', type(exc).__name__, exc)\n"
    "\n"
)
EXPECTED = (
    "REFUSED ValueError greet is defined in __main__ (a script or the manage.py "
    "shell prompt), which a worker can't import"
)


def test_shell_command_option(run_manage):
    code, out, err = run_manage("shell", "-c", SESSION)

    assert code == 0, err
    assert EXPECTED in out
    assert "ALLOWED_MODULES" not in out


def test_shell_piped_input():
    done = subprocess.run(
        [sys.executable, str(PROJECT_DIR / "manage.py"), "shell"],
        input=SESSION,
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    assert EXPECTED in done.stdout


def test_shell_interactive_prompt():
    """On a terminal the shell runs Python's interactive console."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, str(PROJECT_DIR / "manage.py"), "shell", "-i", "python"],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env={**worker_env(), "TERM": "dumb", "PYTHONSTARTUP": ""},
        close_fds=True,
    )
    os.close(terminal)
    output = b""
    try:
        os.write(controller, SESSION.encode() + b"exit()\n")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 1)
            if ready:
                try:
                    chunk = os.read(controller, 4096)
                except OSError:  # the shell exited and closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
            elif process.poll() is not None:
                break
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        os.close(controller)
    text = output.decode(errors="replace").replace("\r\n", "\n")
    assert " ".join(EXPECTED.split()) in " ".join(text.split()), text


def test_a_script_function_gets_the_same_message(tmp_path):
    script = tmp_path / "script.py"
    script.write_text("import django\ndjango.setup()\n" + SESSION.replace("\n\n", "\n"))
    done = subprocess.run(
        [sys.executable, str(script)],
        env=worker_env(DJANGO_SETTINGS_MODULE="testproject.settings"),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    assert EXPECTED in done.stdout
