#!/usr/bin/env python3
"""Benchmark async_jobs beside its peers and bare database loops.

    python3 benchmarks/run.py --peers [--database sqlite|postgres] [--jobs N]
        [--commits N] [--rounds N] [--samples N] [--clients N] [--lock-seconds N]
    .venv/bin/python benchmarks/run.py [same options]

``--peers`` makes (or refreshes) the virtualenv ``.venv-bench`` with the
package, psycopg and the peers of benchmarks/requirements-peers.txt
(procrastinate, django-tasks-db), and runs there. Without it the script runs
with the Python that runs it (``python3 runtests.py`` makes ``.venv``), and
skips the peers that are not installed there. PostgreSQL is a throwaway
server with fsync on, so commits cost what they cost in production; SQLite is
a temporary file. Every figure is printed beside a peer's or a baseline's
measured in the same run, and a ratio: other work on the machine moves both
alike. The default run takes about ten minutes with the peers.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
TEST_PROJECTS = REPO / "test_projects"
PEER_VENV = REPO / ".venv-bench"
PEER_REQUIREMENTS = BENCHMARKS / "requirements-peers.txt"
#: The peers: the package each needs, and the databases it runs on.
PEERS = {
    "procrastinate": ("procrastinate", ("postgres",)),
    "django-tasks-db": ("django_tasks_db", ("sqlite", "postgres")),
}
sys.path.insert(0, str(TEST_PROJECTS))

from throwaway_postgres import postgres_cluster  # noqa: E402

#: django-tasks-db's db_worker polls (every second by default): every 0.1s
#: here, as async_jobs' workers do on SQLite.
POLL = "0.1"


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


def use_peer_venv(argv: list[str]) -> None:
    """Make or refresh .venv-bench, then run this script again inside it."""
    if Path(sys.prefix).resolve() == PEER_VENV.resolve():
        return
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {PEER_VENV.name}...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    digest = hashlib.sha256()
    for path in (REPO / "setup.cfg", REPO / "pyproject.toml", PEER_REQUIREMENTS):
        digest.update(path.read_bytes())
    stamp, stamp_file = digest.hexdigest(), PEER_VENV / ".bench-install-stamp"
    if not stamp_file.exists() or stamp_file.read_text() != stamp:
        print(f"installing into {PEER_VENV.name}...", file=sys.stderr, flush=True)
        stamp_file.unlink(missing_ok=True)
        subprocess.run(
            [
                str(python), "-m", "pip", "install", "--quiet",
                "--disable-pip-version-check", "-e", f"{REPO}[postgres]",
                "-r", str(PEER_REQUIREMENTS),
            ],
            check=True,
        )  # fmt: skip
        stamp_file.write_text(stamp)
    sys.stdout.flush()
    os.execv(str(python), [str(python), str(Path(__file__).resolve()), *argv])


def run_json(script: str, env: dict, *args: str, settings: str = "") -> dict | list:
    """Run a measuring script of this folder; return the JSON it prints."""
    if settings:
        env = {**env, "DJANGO_SETTINGS_MODULE": settings}
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        timeout=1800,
        check=True,
    )
    return json.loads(result.stdout)


def installed_peers(name: str) -> list[str]:
    """The peers that run on this database, saying which are skipped and why."""
    peers = []
    for peer, (package, databases) in PEERS.items():
        if name not in databases:
            continue
        if importlib.util.find_spec(package):
            peers.append(peer)
        else:
            print(
                f"\n{peer} is not installed here: skipped "
                "(run.py --peers measures it, in .venv-bench)",
                flush=True,
            )
    return peers


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
        f"psycopg {version('psycopg')}, {server}, SQLite {sqlite3.sqlite_version}\n"
        f"procrastinate {version('procrastinate')}, "
        f"django-tasks-db {version('django-tasks-db')}, "
        f"django-tasks {version('django-tasks')}"
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


def report(name: str, figures: list[dict], against: str = "baseline") -> str:
    rows = [("measure", "jobs", "async_jobs", against, "ratio", "target", "")]
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
    return table(name, rows)


def table(name: str, rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [name]
    for row in rows:
        cells = zip(row, widths, strict=True)
        lines.append("  ".join(cell.ljust(width) for cell, width in cells))
    return "\n".join(line.rstrip() for line in lines)


def clients_report(figures: dict) -> str:
    """Jobs/s of each way, and async_jobs' ratio to each of the others."""
    from clients import WAYS

    rates = figures["rates"]
    ours = rates["schedule"]
    rows = [("clients scheduling at once", "jobs/s", "schedule() / this")]
    for way, rate in rates.items():
        ratio = "" if way == "schedule" else f"{ours / rate:.2f}x"
        rows.append((WAYS[way], format_value(rate, "jobs/s"), ratio))
    return table(
        f"PostgreSQL, {figures['clients']} client processes at once, "
        f"{figures['commits']} transactions of 1 job each per client",
        rows,
    )


def notify_lock_report(figures: dict) -> str:
    """Commits/s of each way, and NOTIFY after the commit against inside."""
    from notify_lock import WAYS

    rates = figures["rates"]
    counts = list(rates["none"])
    rows = [("pgbench clients", *counts)]
    for way, label in WAYS.items():
        rows.append((label, *(f"{rates[way][c]:,.0f}" for c in counts)))
    rows.append(
        (
            "after / inside",
            *(f"{rates['after'][c] / rates['inside'][c]:.2f}x" for c in counts),
        )
    )
    return table(
        "PostgreSQL, commits/s of one-job transactions (schedule()'s INSERT) "
        f"by pgbench's C clients, best of {figures['rounds']} runs of "
        f"{figures['seconds']} s",
        rows,
    )


def measure(name: str, options: argparse.Namespace) -> None:
    """Print the figures of one database: peers, many clients, baselines."""
    title = {
        "postgres": "PostgreSQL (fsync on; workers woken by NOTIFY)",
        "sqlite": "SQLite (file; workers poll every 0.1s)",
    }[name]
    common = [
        f"--jobs={options.jobs}",
        f"--commits={options.commits}",
        f"--samples={options.samples[name]}",
        f"--rounds={options.rounds}",
    ]
    with database(name) as env:
        if peers := installed_peers(name):
            by_peer = run_json(
                "peers.py", env, *common, f"--sleep={options.sleep[name]}",
                f"--poll={POLL}", settings="peer_settings",
            )  # fmt: skip
            for peer in peers:
                print(
                    f"\n{report(f'{title}: async_jobs vs {peer}', by_peer[peer], peer)}"
                    f"\n(ratios: async_jobs / {peer}, times {peer} / async_jobs; "
                    f"best of {options.rounds} rounds, taken in turns)",
                    flush=True,
                )
        if name == "postgres" and options.clients:
            figures = run_json(
                "clients.py", env, f"--clients={options.clients}",
                f"--commits={options.commits}", f"--rounds={options.rounds}",
                settings="peer_settings",
            )  # fmt: skip
            print(f"\n{clients_report(figures)}", flush=True)
        if name == "postgres" and options.lock_seconds:
            if (postgres_bindir() / "pgbench").is_file():
                counts = sorted({1, options.clients or 8, 4 * (options.clients or 8)})
                figures = run_json(
                    "notify_lock.py", env, f"--clients={','.join(map(str, counts))}",
                    f"--seconds={options.lock_seconds}",
                    f"--rounds={min(options.rounds, 2)}",
                )  # fmt: skip
                print(f"\n{notify_lock_report(figures)}", flush=True)
            else:
                print("\npgbench is not installed here: skipped notify_lock.py")
        figures = run_json("measure.py", env, *common, f"--sleep={options.sleep[name]}")
    print(
        f"\n{report(title, figures)}\n"
        f"(best of {options.rounds} rounds of {options.jobs} jobs per drain "
        f"and bulk run and {options.commits} single-job transactions; "
        f"{options.samples[name]} latency samples)",
        flush=True,
    )


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
    parser.add_argument(
        "--clients",
        type=int,
        default=8,
        help="Client processes scheduling at once on PostgreSQL (0: skip).",
    )
    parser.add_argument(
        "--lock-seconds",
        type=int,
        default=3,
        help="Seconds per pgbench run of notify_lock.py on PostgreSQL (0: skip).",
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help="Run in .venv-bench, made or refreshed with the peers installed.",
    )
    options = parser.parse_args()
    if options.peers:
        use_peer_venv(sys.argv[1:])
    if options.samples < 10:
        parser.error(
            "--samples must be at least 10: SQLite takes a fifth, and a p95 needs two"
        )
    options.samples = {"postgres": options.samples, "sqlite": options.samples // 5}
    # SQLite workers only poll; PostgreSQL workers are woken by NOTIFY.
    options.sleep = {"postgres": "1", "sqlite": "0.1"}

    print(versions(), flush=True)
    for name in options.database or ["sqlite", "postgres"]:
        measure(name, options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
