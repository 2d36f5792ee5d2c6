"""Writing new jobs, and announcing them once they have committed.

Every path that inserts a job goes through ``insert_job()`` or
``insert_jobs()``, so workers are woken and ``job_scheduled`` is sent for each.
``insert_jobs()`` writes many with one statement: on PostgreSQL the rows travel
as one JSON document that the server unpacks with ``jsonb_to_recordset()``:
Python's C encoder writes it, where ``bulk_create()`` prepares every field of
every row in Python, three times as slow for a job row of 17 columns. Elsewhere
``bulk_create()`` does it. Either way the jobs get their primary keys, as
``bulk_create()`` gives them.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import cast

from django.db import connections, transaction

from async_jobs.models import Job
from async_jobs.notifications import notify_on_commit
from async_jobs.signals import job_scheduled


def insert_job(job: Job, using: str) -> None:
    """Insert a new, already checked job; announce it."""
    job.save(using=using, force_insert=True)
    announce([job], using)


def insert_jobs(jobs: list[Job], using: str) -> None:
    """Insert new, already checked jobs; give each its ``pk``; announce them."""
    _insert_rows(jobs, using)
    announce(jobs, using)


def announce(jobs: list[Job], using: str) -> None:
    """Once the transaction commits: wake workers, then send ``job_scheduled``."""
    notify_on_commit(using, jobs)
    for job in jobs:
        transaction.on_commit(
            # A lambda, not a partial: Django logs a robust hook's __qualname__.
            # (mypy can't infer a lambda whose argument has a default.)
            lambda job=job: job_scheduled.send(sender=Job, job=job),  # type: ignore[misc]
            using=using,
            robust=True,  # the job is committed: a receiver's error can't undo it
        )


def _insert_rows(jobs: list[Job], using: str) -> None:
    connection = connections[using]
    if connection.vendor != "postgresql":
        Job.objects.using(using).bulk_create(jobs)
        return
    quote = connection.ops.quote_name
    fields = [field for field in Job._meta.concrete_fields if not field.primary_key]
    columns = ", ".join(quote(cast(str, field.column)) for field in fields)
    types = ", ".join(
        f"{quote(cast(str, field.column))} {field.db_type(connection)}"
        for field in fields
    )
    rows = [
        {field.column: getattr(job, field.attname) for field in fields} for job in jobs
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {quote(Job._meta.db_table)} ({columns}) "
            f"SELECT {columns} FROM jsonb_to_recordset(%s::jsonb) AS rows({types}) "
            f"RETURNING {quote(Job._meta.pk.column)}",
            [json.dumps(rows, default=_isoformat)],
        )
        # Rows come back in the order inserted, as bulk_create() relies on too.
        for job, (pk,) in zip(jobs, cursor.fetchall(), strict=True):
            job.pk = pk
            job._state.adding = False
            job._state.db = using


def _isoformat(value: object) -> str:
    """The job's datetimes, for the server to read back exactly."""
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not a job column's type")
