#!/usr/bin/env python3
"""Benchmark async_jobs beside bare database loops, on SQLite and PostgreSQL.

    .venv/bin/python benchmarks/run.py [--database sqlite|postgres] [--jobs N]
        [--commits N] [--samples N]

(``python3 runtests.py`` makes ``.venv`` with Django and psycopg.) PostgreSQL
is a throwaway server with fsync on, so commits cost what they cost in
production; SQLite is a temporary file. Every figure is printed beside a
baseline measured in the same run, and a ratio: other work on the machine
moves both alike. The default run takes about three minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
TEST_PROJECTS = BENCHMARKS.parent / "test_projects"
sys.path.insert(0, str(TEST_PROJECTS))

from throwaway_postgres import postgres_cluster  # noqa: E402


@contextlib.contextmanager
def database(name: str) -> Iterator[dict]:
    """The environment that points the test project at a fresh database."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "benchmark_settings",
        "PYTHONPATH": os.pathsep.join([str(BENCHMARKS), str(TEST_PROJECTS)]),
    }
    env.pop("ASYNC_JOBS_DATABASE_URL", None)
    if name == "postgres":
        with postgres_cluster(durable=True) as url:
            yield {**env, "ASYNC_JOBS_DATABASE_URL": url}
    else:
        with tempfile.TemporaryDirectory(prefix="ajbench-") as tmp:
            yield {**env, "ASYNC_JOBS_DB_NAME": str(Path(tmp) / "bench.sqlite3")}


def measure(name: str, options: argparse.Namespace) -> list[dict]:
    with database(name) as env:
        result = subprocess.run(
            [
                sys.executable,
                str(BENCHMARKS / "measure.py"),
                f"--jobs={options.jobs}",
                f"--commits={options.commits}",
                f"--samples={options.samples[name]}",
                f"--sleep={options.sleep[name]}",
                f"--rounds={options.rounds}",
            ],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            timeout=900,
            check=True,
        )
    return json.loads(result.stdout)


def versions() -> str:
    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "-"

    import sqlite3

    bindir = postgres_bindir()
    server = subprocess.run(
        [str(bindir / "postgres"), "--version"], capture_output=True, text=True
    ).stdout.strip()
    return (
        f"{platform.node()}: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{platform.system()} {platform.release()}\n"
        f"Python {platform.python_version()}, Django {version('Django')}, "
        f"psycopg {version('psycopg')}, {server}, SQLite {sqlite3.sqlite_version}"
    )


def postgres_bindir() -> Path:
    from throwaway_postgres import find_bindir

    return find_bindir()


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:.2f} ms"
    return f"{value:,.0f} {unit}"


def report(name: str, figures: list[dict]) -> str:
    rows = [("measure", "jobs", "async_jobs", "baseline", "ratio", "target", "")]
    for figure in figures:
        rows.append(
            (
                figure["measure"],
                figure["kind"],
                format_value(figure["ours"], figure["unit"]),
                format_value(figure["baseline"], figure["unit"]),
                "-" if figure["ratio"] is None else f"{figure['ratio']:.2f}x",
                figure["target"],
                {True: "met", False: "MISSED", None: ""}[figure["met"]],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [name]
    for row in rows:
        cells = zip(row, widths, strict=True)
        lines.append("  ".join(cell.ljust(width) for cell, width in cells))
    return "\n".join(line.rstrip() for line in lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database",
        choices=["sqlite", "postgres"],
        action="append",
        help="Only this database (repeat for both; default both).",
    )
    parser.add_argument("--jobs", type=int, default=1000, help="Jobs per drain run.")
    parser.add_argument(
        "--commits", type=int, default=300, help="Jobs enqueued one per transaction."
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="Runs of each figure; the best counts."
    )
    parser.add_argument(
        "--samples", type=int, default=200, help="Latency samples (SQLite: a fifth)."
    )
    options = parser.parse_args()
    if options.samples < 10:
        parser.error(
            "--samples must be at least 10: SQLite takes a fifth, and a p95 needs two"
        )
    options.samples = {"postgres": options.samples, "sqlite": options.samples // 5}
    # SQLite workers only poll; PostgreSQL workers are woken by NOTIFY.
    options.sleep = {"postgres": "1", "sqlite": "0.1"}

    print(versions(), flush=True)
    for name in options.database or ["sqlite", "postgres"]:
        title = {
            "postgres": "PostgreSQL (fsync on; workers woken by NOTIFY)",
            "sqlite": "SQLite (file; workers poll every 0.1s)",
        }[name]
        figures = measure(name, options)
        print(
            f"\n{report(title, figures)}\n"
            f"(best of {options.rounds} rounds of {options.jobs} jobs per drain "
            f"and bulk run and {options.commits} single-job transactions; "
            f"{options.samples[name]} latency samples)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
