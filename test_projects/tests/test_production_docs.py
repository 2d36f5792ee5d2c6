"""docs/production.rst's examples are real: the systemd unit parses (and passes
``systemd-analyze verify`` where systemd is installed), and the README lists
every page of the docs."""

import configparser
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


def block_with_caption(page: str, caption: str) -> str:
    """The body of the ``code-block`` whose ``:caption:`` is ``caption``."""
    text = (DOCS / page).read_text()
    match = re.search(
        rf"^\.\. code-block:: \w+\n   :caption: {re.escape(caption)}\n\n"
        r"((?:(?: {4}.*)?\n)+)",
        text,
        re.MULTILINE,
    )
    assert match, f"no code-block captioned {caption!r} in {page}"
    return textwrap.dedent(match.group(1)).strip() + "\n"


def systemd_unit() -> str:
    return block_with_caption("production.rst", "async-jobs@.service")


def test_the_systemd_unit_runs_a_loop_worker_that_stops_gracefully():
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # systemd's keys are case-sensitive
    unit.read_string(systemd_unit())

    assert unit.sections() == ["Unit", "Service", "Install"]
    command = unit["Service"]["ExecStart"].split()
    assert command[1:4] == ["manage.py", "flush_queue", "--loop"]
    assert Path(command[0]).is_absolute()
    assert unit["Service"]["KillSignal"] == "SIGTERM"  # finish the running job
    # To flush_queue alone, which passes it on to its worker processes once.
    assert unit["Service"]["KillMode"] == "mixed"
    from async_jobs.management.commands.flush_queue import Command

    options = (
        Command().create_parser("manage.py", "flush_queue").parse_args(command[3:])
    )
    assert (options.loop, options.processes) == (True, 2)
    assert int(unit["Service"]["TimeoutStopSec"]) >= 60
    assert unit["Service"]["Restart"] == "always"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_worker_page_links_to_the_unit_instead_of_repeating_it():
    worker = (DOCS / "worker.rst").read_text()

    assert "ExecStart=" not in worker
    assert ":ref:`production-systemd`" in worker


@pytest.mark.skipif(
    not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed"
)
def test_systemd_analyze_verifies_the_unit(tmp_path):
    # The unit's paths, made real: the project directory and its Python.
    project = tmp_path / "srv" / "shop"
    project.mkdir(parents=True)
    unit = systemd_unit().replace("/srv/shop/.venv/bin/python", sys.executable)
    unit = unit.replace("/srv/shop", str(project)).replace("User=shop\n", "")
    path = tmp_path / "async-jobs@1.service"
    path.write_text(unit)

    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )

    problems = [
        line for line in done.stderr.splitlines() if "async-jobs@1.service" in line
    ]
    assert not problems, done.stderr  # it warns, and "ignores", with status 0


def toctree_pages() -> list[str]:
    index = (DOCS / "index.rst").read_text()
    pages = []
    for block in re.findall(r"\.\. toctree::\n((?: {3}.*\n|\n)+)", index):
        pages += [
            line.strip()
            for line in block.splitlines()
            if line.strip() and not line.strip().startswith(":")
        ]
    return pages


def test_the_readme_links_every_page_of_the_docs():
    readme = (REPO / "README.md").read_text()
    pages = toctree_pages()

    assert "production" in pages
    assert {path.stem for path in DOCS.glob("*.rst")} - {"index"} == set(pages)
    for page in pages:
        assert f"(docs/{page}.rst)" in readme, f"README.md doesn't link {page}"


def test_the_readme_names_what_production_needs():
    readme = (REPO / "README.md").read_text()

    for words in ("flush_queue --loop", "queue_status", "prune_jobs", "admin"):
        assert words in readme
    assert "[production](docs/production.rst)" in readme
