"""The docs can't drift from the code: their examples run, their lists are complete.

* every ``>>>`` example in docs/*.rst and README.md runs as a doctest;
* every ``python`` code block in them executes (each page's blocks in order,
  in one namespace), and any ``ASYNC_JOBS`` it sets is a valid setting;
* every ``ASYNC_JOBS`` key, ``meta`` key, model field and management command
  is documented, with the right defaults.

Code shown with ``literalinclude`` comes from modules that other tests import
and run, and the Sphinx build (``.ci/run``, with ``-W``) fails on a missing file.
"""

import doctest
import re
import textwrap
from pathlib import Path

import pytest
from django.core.management import find_commands

import async_jobs
from async_jobs import Error, Group, Job
from async_jobs.conf import DEFAULTS, NOT_A_DICT, SETTINGS, UNKNOWN_KEY, problems
from async_jobs.validation import META_KEYS

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
PAGES = [*sorted(DOCS.glob("*.rst")), REPO / "README.md"]
DOCTEST_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

RST_PYTHON = re.compile(
    r"( *)\.\. (?:code-block|code|sourcecode):: (?:python3?|py)\s*$"
)
RST_OPTION = re.compile(r" +:[\w-]+:")
MARKDOWN_PYTHON = re.compile(
    r"^```(?:python3?|py)\n(.*?)^```", re.MULTILINE | re.DOTALL
)


def page_id(path: Path) -> str:
    return str(path.relative_to(REPO))


def read(name: str) -> str:
    return (DOCS / name).read_text()


def rst_python_blocks(text: str) -> list[str]:
    """The bodies of a reStructuredText page's ``code-block:: python``."""
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = RST_PYTHON.match(lines[i])
        i += 1
        if not match:
            continue
        indent = len(match.group(1))
        while i < len(lines) and RST_OPTION.match(lines[i]):
            i += 1
        body = []
        while i < len(lines) and (
            not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent
        ):
            body.append(lines[i])
            i += 1
        blocks.append(textwrap.dedent("\n".join(body)).strip() + "\n")
    return blocks


def python_blocks(path: Path) -> list[str]:
    text = path.read_text()
    if path.suffix == ".md":
        blocks = MARKDOWN_PYTHON.findall(text)
    else:
        blocks = rst_python_blocks(text)
    return [block for block in blocks if ">>>" not in block]  # doctests run below


def test_the_block_finder_finds_indented_blocks_with_options():
    text = (
        "Intro::\n\n"
        "   .. code-block:: python\n"
        "      :caption: x.py\n\n"
        "      a = 1\n\n"
        "      b = a + 1\n"
        "   after\n"
        ".. code-block:: text\n\n   not python\n"
    )
    assert rst_python_blocks(text) == ["a = 1\n\nb = a + 1\n"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "path", [p for p in PAGES if ">>>" in p.read_text()], ids=page_id
)
def test_doctest_examples_run(path):
    test = doctest.DocTestParser().get_doctest(
        path.read_text(), {}, page_id(path), str(path), 0
    )
    runner = doctest.DocTestRunner(optionflags=DOCTEST_FLAGS)
    report = []
    runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
    assert runner.tries > 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", [p for p in PAGES if python_blocks(p)], ids=page_id)
def test_python_code_blocks_execute(path):
    namespace: dict = {"__name__": f"docs_{path.stem}"}
    for number, block in enumerate(python_blocks(path), 1):
        where = f"{page_id(path)}, python block {number}"
        exec(compile(block, where, "exec"), namespace)
        if "ASYNC_JOBS" in namespace:
            assert problems(namespace.pop("ASYNC_JOBS")) == [], where


def section(text: str, title: str, underline: str) -> str:
    """The body of the section headed ``title`` (until the next such heading)."""
    heading = f"\n{title}\n{underline * len(title)}\n"
    assert heading in text, f"no section {title!r}"
    body = text.split(heading, 1)[1]
    following = re.search(rf"\n[^\n]+\n{re.escape(underline)}{{3,}}\n", body)
    return body[: following.start()] if following else body


def test_every_setting_is_documented_with_its_default():
    page = read("settings.rst")
    for key, default in DEFAULTS.items():
        body = section(page, f"``{key}``", "-")
        assert f"\nDefault: ``{default!r}``\n" in body, f"{key}: default {default!r}"
        assert f".. _setting-{key}:" in page


def test_every_settings_check_id_is_distinct_and_listed():
    page = read("settings.rst")
    ids = [NOT_A_DICT, UNKNOWN_KEY, *(setting.check_id for setting in SETTINGS)]
    assert len(set(ids)) == len(ids)
    for check_id in ids:
        assert f"``{check_id}``" in page, check_id


def test_every_meta_key_is_documented():
    meta = section(read("reference.rst"), "schedule()", "-").split("``meta``", 1)[1]
    for key in META_KEYS:
        assert re.search(rf"^ +``{key}``\n", meta, re.MULTILINE), key


def documented_attributes(text: str) -> set[str]:
    names = set()
    for match in re.finditer(r"\.\. attribute:: (\w+)((?:\n +\w+ *$)*)", text, re.M):
        names.add(match.group(1))
        names.update(match.group(2).split())
    return names


@pytest.mark.parametrize("model", [Job, Error, Group], ids=lambda model: model.__name__)
def test_every_model_field_is_documented(model):
    body = section(read("reference.rst"), model.__name__, "-")
    fields = {field.name for field in model._meta.get_fields()} - {"id"}
    assert fields - documented_attributes(body) == set()


def test_every_management_command_is_documented():
    commands = find_commands(str(Path(async_jobs.__file__).parent / "management"))
    pages = "".join(path.read_text() for path in DOCS.glob("*.rst"))
    assert commands
    for name in commands:
        assert f".. django-command:: {name}\n" in pages, (
            f"document {name} with '.. django-command:: {name}' on a docs page"
        )


FLUSH_QUEUE_LINE = re.compile(
    r"Ran \d+ jobs? in [^`\n]*|\d+ [\w.]+ (?:succeeded|retry|failed) \(attempt[^`\n]*"
)


def output_shape(line: str) -> str:
    """A flush_queue output line with its names, numbers and error blanked."""
    line = re.sub(r"\): .*", "): ERROR", line.strip())
    line = re.sub(r"\b[a-z_]+(?:\.[a-z_]+)+\b", "NAME", line)
    line = re.sub(r"\bjobs?\b", "jobs", line.replace("...", "9"))  # doctest's ...
    return re.sub(r"\d+(?:\.\d+)?", "9", line)


@pytest.mark.django_db(transaction=True)
def test_flush_queue_output_shown_in_the_docs_is_what_it_prints(flush_queue):
    from async_jobs import schedule

    schedule("shop.tasks.noop")
    schedule("shop.tasks.write_then_fail", args=["x"], meta={"max_attempts": 1})
    schedule("shop.tasks.write_then_fail", args=["y"])
    printed = flush_queue("--verbosity", "2").splitlines()
    shapes = {output_shape(line) for line in printed}
    assert len(shapes) == 4  # succeeded, failed, retry, summary

    shown = [
        (page_id(path), match.group())
        for path in PAGES
        for match in FLUSH_QUEUE_LINE.finditer(path.read_text())
    ]
    assert len(shown) >= 5
    for where, line in shown:
        assert output_shape(line) in shapes, f"{where}: {line!r} is not what it prints"


def test_every_test_the_guarantees_page_names_exists():
    """docs/guarantees.rst proves each promise by naming a test: keep them real."""
    named = re.findall(r"``(test_\w+\.py)::(test_\w+)", read("guarantees.rst"))
    assert len(named) >= 15
    for module, name in named:
        source = (REPO / "test_projects" / "tests" / module).read_text()
        assert f"\ndef {name}(" in source, f"guarantees.rst names {module}::{name}"
