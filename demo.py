#!/usr/bin/env python3
"""The demo: one job's whole life, from a web form to the audit trail.

    python3 demo.py

Like runtests.py, it first installs what it needs into .venv and re-runs
itself there. Then it drives the demo project in test_projects/demo/ (the
tutorial's feedback app) on a new SQLite database in test_projects/demo/var/:
a form post that commits, one that rolls back, ``flush_queue`` while the mail
server is down and again once it is back, and the rows that record it all.
The project is left in place to explore (``manage.py runserver``).
"""

from __future__ import annotations

import email
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from runtests import use_venv

REPO = Path(__file__).resolve().parent
PROJECT = REPO / "test_projects" / "demo"
FLUSH_QUEUE = ["manage.py", "flush_queue", "--verbosity", "2"]


class RequestFailed(Exception):
    """Stands for anything that goes wrong in a request after schedule()."""


def heading(text: str) -> None:
    print(f"\n== {text} ==")


def table(rows: list[tuple], headers: tuple[str, ...]) -> None:
    cells = [headers, *[tuple(str(value) for value in row) for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        padded = (value.ljust(width) for value, width in zip(row, widths, strict=True))
        print(("  " + "  ".join(padded)).rstrip())


def shown(path: Path) -> str:
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def flush_queue(**env: str) -> None:
    """Run ``manage.py flush_queue`` as cron would: a process of its own."""
    print("$ python " + " ".join(FLUSH_QUEUE))
    done = subprocess.run(
        [sys.executable, *FLUSH_QUEUE],
        cwd=PROJECT,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    print(done.stdout, end="")
    if done.returncode != 0:
        sys.exit(f"flush_queue exited with {done.returncode}:\n{done.stderr}")


def post_feedback(name: str, address: str, message: str) -> str:
    from django.test import Client

    data = {"name": name, "email": address, "message": message}
    response = Client().post("/feedback/", data)
    return f"{response.status_code} redirect to {response.headers['Location']}"


def show_jobs() -> None:
    from async_jobs import Job

    rows = [
        (job.pk, job.name, json.dumps(job.args), job.status, job.attempts, result)
        for job in Job.objects.order_by("pk")
        for result in [json.dumps(job.result)]
    ]
    table(rows, ("id", "name", "args", "status", "attempts", "result"))


def show_mail(mail_dir: Path) -> None:
    for path in sorted(mail_dir.glob("*.log")):
        text = path.read_text().split("\n" + "-" * 79, 1)[0]
        message = email.message_from_string(text)
        print(f"  To: {message['To']}")
        print(f"  Subject: {message['Subject']}")
        for line in message.get_payload().strip().splitlines():
            print(f"  | {line}".rstrip())


def main() -> int:
    use_venv(Path(__file__), sys.argv[1:])
    sys.path.insert(0, str(PROJECT))
    os.environ["DJANGO_SETTINGS_MODULE"] = "demoproject.settings"
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection, transaction
    from django.utils import timezone
    from feedback.models import Feedback

    from async_jobs import Error, Job

    var = settings.VAR_DIR
    for name in ("db.sqlite3", "jobs.log"):
        (var / name).unlink(missing_ok=True)
    shutil.rmtree(settings.DEMO_MAIL_DIR, ignore_errors=True)
    call_command("migrate", verbosity=0)
    print(
        "django-async-jobs demo: a feedback form whose view saves the message and\n"
        "schedules a job to email the visitor a summary. A new SQLite database:\n"
        f"{shown(var / 'db.sqlite3')}"
    )

    heading("1. Ada posts the form: the request's transaction commits")
    print("POST /feedback/ ->", post_feedback("Ada", "ada@example.com", "Love it."))
    print("In one transaction the view saved her Feedback and called")
    print("schedule(tasks.email_summary, args=[feedback.pk]); it committed.")

    heading("2. Bob posts the form: the request fails later and rolls back")
    try:
        with transaction.atomic():
            print("POST /feedback/ ->", post_feedback("Bob", "bob@example.com", "Hm."))
            raise RequestFailed("something after the view failed")
    except RequestFailed as exc:
        print(f"then {type(exc).__name__}: {exc}; the transaction rolled back,")
    print("and Bob's Feedback and the job scheduled for it vanished together.")

    heading("3. The database now")
    print(f"Feedback rows: {', '.join(map(str, Feedback.objects.order_by('pk')))}")
    print("Job rows:")
    show_jobs()

    heading("4. cron runs flush_queue; the mail server is down")
    connection.close()
    with socket.socket() as closed_port:
        # Bound but not listening: connecting to it is refused.
        closed_port.bind(("127.0.0.1", 0))
        host, port = closed_port.getsockname()
        flush_queue(DEMO_SMTP_SERVER=f"{host}:{port}")
    job = Job.objects.get()
    error = job.errors.get()
    ada = Feedback.objects.get()
    print(f"The job's write was rolled back: Feedback.emailed is {ada.emailed}.")
    wait = (job.run_after - error.occurred).total_seconds()
    print(f"The job stays {job.status}, due again {wait:.0f}s after it failed;")
    print("its error and traceback are kept in an Error row.")

    heading("5. The mail server is back; the next flush_queue retries the job")
    time.sleep(max(0.0, (job.run_after - timezone.now()).total_seconds()) + 0.1)
    print(f"({wait:.0f}s later)")
    flush_queue()
    print("The mail, as the file email backend wrote it:")
    show_mail(settings.DEMO_MAIL_DIR)

    heading("6. The audit trail: every job and every failed attempt is kept")
    print("Job rows:")
    show_jobs()
    print("Error rows:")
    errors = Error.objects.values_list("job_id", "attempt", "exception")
    table(list(errors), ("job", "attempt", "exception"))
    ada.refresh_from_db()
    emailed = "set" if ada.emailed else "not set"
    print(f"Feedback.emailed is {emailed}: committed with the job's success.")

    print(
        "\nThe project is still there to explore: the log is in "
        f"{shown(var / 'jobs.log')}, and\n"
        f"  .venv/bin/python {shown(PROJECT / 'manage.py')} runserver\n"
        "serves the form at http://127.0.0.1:8000/feedback/ (then run flush_queue)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
