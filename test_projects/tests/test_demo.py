"""``python3 demo.py`` works, and prints what README.md shows."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README_BLOCK = re.compile(
    r"<!-- The output of python3 demo.py;[^\n]*-->\n```text\n(.*?)```", re.DOTALL
)
DURATION = re.compile(r"\b\d+\.\d+s\b")

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("ASYNC_JOBS_DATABASE_URL")),
    reason="the demo runs on its own SQLite database; once per test run is enough",
)


def normalized(output: str) -> str:
    """The output with what varies from run to run (durations) blanked."""
    return DURATION.sub("N.NNs", output)


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory) -> str:
    var = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "ASYNC_JOBS_DEMO_DIR": str(var), "ASYNC_JOBS_NO_VENV": "1"}
    done = subprocess.run(
        [sys.executable, str(REPO / "demo.py")],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    return done.stdout.replace(str(var), "test_projects/demo/var")


def test_the_demo_shows_the_whole_life_of_a_job(demo_output):
    assert "Bob's Feedback and the job scheduled for it vanished together." in (
        demo_output
    )
    assert "0 succeeded, 1 to retry, 0 failed." in demo_output
    assert "1 succeeded, 0 to retry, 0 failed." in demo_output
    assert "  To: ada@example.com" in demo_output
    assert re.search(
        r"^  1 +feedback\.tasks\.email_summary +\[1\] +succeeded +2 +"
        r'"emailed ada@example.com"$',
        demo_output,
        re.MULTILINE,
    )
    assert re.search(
        r"^  1 +1 +builtins\.ConnectionRefusedError: ", demo_output, re.MULTILINE
    )


def test_the_readme_shows_the_demos_output(demo_output):
    shown = README_BLOCK.search((REPO / "README.md").read_text())
    assert shown, "README.md has no demo output block"
    assert normalized(shown.group(1)) == normalized(demo_output), (
        "README.md's demo output is out of date: run python3 demo.py and paste it"
    )
