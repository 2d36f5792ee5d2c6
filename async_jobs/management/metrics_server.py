"""``flush_queue --metrics-port``: a worker serves its Prometheus metrics.

Imports prometheus_client only when asked to serve, so the option costs
nothing without the ``prometheus`` extra.
"""

from __future__ import annotations

from importlib.util import find_spec
from typing import TYPE_CHECKING

from django.core.management.base import BaseCommand, CommandError, CommandParser

if TYPE_CHECKING:
    from async_jobs.metrics import MetricsServer


def port(value: str) -> int:
    number = int(value)
    if not 0 <= number <= 65535:
        raise ValueError(value)
    return number


def add_metrics_options(parser: CommandParser) -> None:
    parser.add_argument(
        "--metrics-port",
        type=port,
        metavar="PORT",
        help="With --loop, serve this worker's Prometheus metrics at "
        "http://HOST:PORT/metrics (0: a free port, printed). Needs the "
        "'prometheus' extra.",
    )
    parser.add_argument(
        "--metrics-host",
        metavar="HOST",
        help="The address --metrics-port binds (default 127.0.0.1, this machine "
        "only; 0.0.0.0 for every interface).",
    )


def start_metrics_server(
    command: BaseCommand, using: str, *, loop: bool, options: dict
) -> MetricsServer | None:
    """Start serving if ``--metrics-port`` asks; the server, to ``close()``."""
    port, host = options.get("metrics_port"), options.get("metrics_host")
    if port is None:
        if host is not None:
            raise CommandError("--metrics-host only applies with --metrics-port.")
        return None
    if not loop:
        raise CommandError(
            "--metrics-port only applies with --loop: a cron run ends before a "
            "scrape. Its jobs are in the queue gauges of any other endpoint."
        )
    if find_spec("prometheus_client") is None:
        raise CommandError(
            "--metrics-port needs prometheus_client: pip install "
            "'django-async-jobs[prometheus]'."
        )
    from async_jobs.metrics import serve

    try:
        server = serve(host or "127.0.0.1", port, using)
    except OSError as exc:
        raise CommandError(
            f"Can't serve metrics on {host or '127.0.0.1'}:{port}: {exc}"
        ) from exc
    if options["verbosity"] >= 1:
        command.stdout.write(f"Serving Prometheus metrics at {server.url}")
        command.stdout.flush()
        command.stdout.flush()
    return server
