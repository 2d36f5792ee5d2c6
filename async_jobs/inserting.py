"""Writing new jobs, and announcing them once they have committed.

Every path that inserts a job goes through ``insert_job()`` or
``insert_jobs()``, so workers are woken and ``job_scheduled`` is sent for each.
``insert_jobs()`` writes many with one statement: on PostgreSQL the rows travel
as one JSON document that the server unpacks with ``jsonb_to_recordset()``:
Python's C encoder writes it, where ``bulk_create()`` prepares every field of
every row in Python, three times as slow for a job's row. Only the columns
that differ between rows travel in the document: those NULL in every row are
left out (7 of 21 for new jobs), those alike in every row (the function, the
queue, the status, ``created``: all but ``args`` for a typical call) are sent
once, as a parameter each, and when none differs the server makes the rows
from their number. Elsewhere ``bulk_create()`` does it.
Either way the jobs get their primary keys, as ``bulk_create()`` gives them.

``insert_job()`` writes one job on PostgreSQL (psycopg 3) with a fixed
``INSERT`` of the model's columns, built once, whose values psycopg sends
apart from the statement (server-side binding, an unnamed statement: it works
behind PgBouncer's transaction pooling). Django's ``save()`` compiles the
statement and prepares all 22 fields in Python for every job, and Django's
cursor merges the values into the SQL text in Python: together two thirds of
what ``schedule()`` cost in a transaction. It goes through Django's cursor
wrapper all the same, so ``connection.execute_wrapper()`` and query logging
see it. Its JSON columns go as their JSON text, encoded by Python's C
encoder and cast to ``jsonb`` in the statement, where Django's wrapping for
psycopg to encode cost three times as much. When the model's ``pre_save``
or ``post_save`` signal has a receiver for ``Job``, and on other databases,
``save()`` writes it, as before, and the signals are sent.

Announcing: one ``on_commit`` hook per call, which sends the ``NOTIFY``
(``notifications.py``) and then ``job_scheduled`` for each job. It is
registered where the jobs were written, so a savepoint rolled back drops it
with them; ``job_scheduled``'s receivers are those connected when the
transaction commits.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime
from functools import cache
from types import NoneType
from typing import Any, cast

from django.db import connections, models, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorWrapper
from django.db.models import NOT_PROVIDED
from django.db.models.signals import post_save, pre_save

from async_jobs.models import Job
from async_jobs.notifications import announcement, listens
from async_jobs.signals import job_scheduled

#: Where an on_commit hook's error is logged: Django's logger for them.
hook_logger = logging.getLogger("django.db.backends.base")


def insert_job(job: Job, using: str) -> None:
    """Insert a new, already checked job; announce it."""
    if (
        listens(using)  # PostgreSQL with psycopg 3
        and not pre_save.has_listeners(Job)
        and not post_save.has_listeners(Job)
    ):
        _insert_row(job, using)
    else:
        job.save(using=using, force_insert=True)
    announce([job], using)


def insert_jobs(jobs: list[Job], using: str) -> None:
    """Insert new, already checked jobs; give each its ``pk``; announce them."""
    _insert_rows(jobs, using)
    announce(jobs, using)


def announce(jobs: list[Job], using: str) -> None:
    """Once the transaction commits: wake workers, then send ``job_scheduled``."""
    send = announcement(using, jobs)

    def announce_jobs() -> None:
        try:
            if send is not None:
                send()
        finally:
            for job in jobs if job_scheduled.has_listeners(Job) else ():
                try:
                    job_scheduled.send(sender=Job, job=job)
                except Exception as exc:
                    # The job is committed: a receiver's error can't undo it.
                    # Logged as Django logs a robust hook's error.
                    hook_logger.exception(
                        "Error calling %s in on_commit() (%s).",
                        "job_scheduled.send",
                        exc,
                    )

    transaction.on_commit(announce_jobs, using=using, robust=True)


def _insert_row(job: Job, using: str) -> None:
    """``job.save(force_insert=True)``'s INSERT, built once, values bound apart.

    Columns whose value is None and that have no database default are left
    out (NULL either way), so that psycopg and the server handle a dozen
    values, not 19: one statement per set of columns given.
    """
    connection = connections[using]
    columns = _row_columns(connection.alias)
    given = []
    values = []
    for index, (attname, field, prepare, omissible) in enumerate(columns):
        value = getattr(job, attname) if field is None else field.pre_save(job, True)
        if not omissible and hasattr(value, "resolve_expression"):
            # The database's default (DatabaseDefault), or another expression.
            job.save(using=using, force_insert=True)
            return
        if value is not None or not omissible:
            given.append(index)
            values.append(value if prepare is None else prepare(value))
    with _server_binding_cursor(connection) as cursor:
        cursor.execute(_row_insert(connection.alias, tuple(given)), values)
        job.pk = cursor.fetchone()[0]
    job._state.adding = False
    job._state.db = using


def _server_binding_cursor(connection: BaseDatabaseWrapper) -> CursorWrapper:
    """Django's cursor wrapper (``execute_wrapper()``, query logging, errors
    turned into Django's) around a psycopg cursor that sends the values apart
    from the statement, as Django's own does with ``server_side_binding``.

    Prepared only if the project turns psycopg's prepared statements on
    (``OPTIONS["prepare_threshold"]``; Django turns them off): else an
    unnamed statement, which PgBouncer's transaction pooling allows.
    """
    import psycopg

    connection.ensure_connection()
    connection.validate_thread_sharing()
    # django-stubs types make_cursor()'s argument as the wrapper it returns.
    raw = cast(Any, psycopg.Cursor(connection.connection))
    if connection.queries_logged:
        return connection.make_debug_cursor(raw)
    return connection.make_cursor(raw)


@cache
def _row_columns(
    alias: str,
) -> list[tuple[str, models.Field | None, Callable[[Any], Any] | None, bool]]:
    """Each column of a job row, in order: its attribute, the field when its
    ``pre_save()`` must be asked for the value (else None: the attribute is the
    value), how the value is prepared as Django's ``get_db_prep_save()``
    would (None: psycopg takes it as the model holds it), and whether the
    column may be left out when the value is None (no database default)."""
    connection = connections[alias]
    return [
        (
            field.attname,
            None if _plain_pre_save(field) else field,
            _preparer(field, connection),
            field.db_default is NOT_PROVIDED,
        )
        for field in Job._meta.concrete_fields
        if not field.primary_key
    ]


@cache
def _row_insert(alias: str, given: tuple[int, ...]) -> str:
    """The INSERT of a job row with the columns at these places of
    ``_row_columns()``, the others NULL."""
    quote = connections[alias].ops.quote_name
    fields = _given_fields(given)
    chosen = [quote(cast(str, field.column)) for field in fields]
    # A JSON column's value comes as its JSON text (see _preparer()).
    values = ["%s::jsonb" if _as_json_text(field) else "%s" for field in fields]
    return (
        f"INSERT INTO {quote(Job._meta.db_table)} ({', '.join(chosen)}) "
        f"VALUES ({', '.join(values)}) "
        f"RETURNING {quote(Job._meta.pk.column)}"
    )


def _given_fields(given: tuple[int, ...]) -> list[models.Field]:
    """The fields of the columns at these places of ``_row_columns()``."""
    fields = [field for field in Job._meta.concrete_fields if not field.primary_key]
    return [fields[index] for index in given]


def _plain_pre_save(field: models.Field) -> bool:
    """Whether the field's ``pre_save()`` returns the attribute as it is."""
    return (
        type(field) in _AS_THEY_ARE
        or type(field) in (models.ForeignKey, models.JSONField)
    ) and not (
        getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False)
    )


#: Django's fields whose Python value psycopg sends as it is (subclasses,
#: which may prepare values their own way, are not among them).
_AS_THEY_ARE = {
    models.AutoField,
    models.BigAutoField,
    models.BigIntegerField,
    models.BooleanField,
    models.CharField,
    models.DateTimeField,
    models.IntegerField,
    models.PositiveIntegerField,
    models.SmallIntegerField,
}


def _preparer(
    field: models.Field, connection: BaseDatabaseWrapper
) -> Callable[[Any], Any] | None:
    if type(field) in _AS_THEY_ARE:
        return None
    if type(field) is models.ForeignKey:
        return _preparer(field.target_field, connection)
    if _as_json_text(field):
        return _json_text
    return lambda value: field.get_db_prep_save(value, connection)


def _as_json_text(field: models.Field) -> bool:
    """Whether the column's value is sent as JSON text: Django's own
    ``JSONField`` with the standard encoder, as psycopg would encode it."""
    return type(field) is models.JSONField and field.encoder is None


def _json_text(value: Any) -> str | None:
    """What ``get_db_prep_save()`` would wrap for psycopg to encode, encoded
    at once (that wrapping cost about a twelfth of ``schedule()``'s CPU);
    None stays SQL NULL, as Django stores it."""
    return None if value is None else json.dumps(value)


def _insert_rows(jobs: list[Job], using: str) -> None:
    connection = connections[using]
    if not listens(using):  # not PostgreSQL with psycopg 3
        Job.objects.using(using).bulk_create(jobs)
        return
    # Columns NULL in every row are left out, those alike in every row travel
    # once, the others in the document (see the module's docstring).
    columns = _row_columns(connection.alias)
    varying: list[int] = []
    alike: list[int] = []
    values: list[Any] = []
    document: list[list[Any]] = []
    for index, (attname, _, prepare, omissible) in enumerate(columns):
        column = [getattr(job, attname) for job in jobs]
        first = column[0]
        if not _alike(first, column):
            varying.append(index)
            document.append(column)
        elif first is not None or not omissible:
            alike.append(index)
            values.append(first if prepare is None else prepare(first))
    if varying:
        attnames = [columns[index][0] for index in varying]
        rows = [
            dict(zip(attnames, row, strict=True)) for row in zip(*document, strict=True)
        ]
        values.append(json.dumps(rows, default=_isoformat))
    else:
        values.append(len(jobs))
    with _server_binding_cursor(connection) as cursor:
        cursor.execute(
            _rows_insert(connection.alias, tuple(varying), tuple(alike)), values
        )
        # Rows come back in the order inserted, as bulk_create() relies on too.
        for job, (pk,) in zip(jobs, cursor.fetchall(), strict=True):
            job.pk = pk
            job._state.adding = False
            job._state.db = using


#: The types whose equal values are the same value to the database. Not
#: float (0.0 == -0.0), nor a list or dict holding any (1 == True in Python,
#: not in JSON): an empty one is alike only with another empty one.
_EXACT_TYPES = frozenset({NoneType, bool, int})


def _alike(first: Any, column: list[Any]) -> bool:
    """Whether every value of the column is ``first``, as the database sees it."""
    kind = type(first)
    if isinstance(first, str):
        # A str subclass too (Job.Status): the database gets its text.
        return all(type(value) is kind and str.__eq__(value, first) for value in column)
    if kind is datetime:
        # The same wall time in one zone is two instants where a clock goes
        # back, told apart by fold, which == ignores: compare the offsets too.
        offset = first.utcoffset()
        return all(
            value is first
            or (type(value) is kind and value == first and value.utcoffset() == offset)
            for value in column
        )
    if kind not in _EXACT_TYPES and (kind not in (list, dict) or first):
        return False
    return all(type(value) is kind and value == first for value in column)


@cache
def _rows_insert(alias: str, varying: tuple[int, ...], alike: tuple[int, ...]) -> str:
    """The INSERT of many job rows, with the columns at these places of
    ``_row_columns()``, the others NULL. Its parameters: one value for each
    ``alike`` column, then the JSON document of the rows' ``varying`` ones
    (or, when none varies, the number of rows)."""
    connection = connections[alias]
    quote = connection.ops.quote_name
    fields = _given_fields(varying)
    constants = _given_fields(alike)
    columns = ", ".join(quote(cast(str, field.column)) for field in fields + constants)
    # Without its modifier (varchar, not varchar(200)): a cast to the column's
    # own type would cut a value too long, which the insert refuses.
    selected = [quote(field.attname) for field in fields] + [
        f"%s::{cast(str, field.db_type(connection)).partition('(')[0]}"
        for field in constants
    ]
    if fields:
        types = ", ".join(
            f"{quote(field.attname)} {field.db_type(connection)}" for field in fields
        )
        source = f"jsonb_to_recordset(%s::jsonb) AS rows({types})"
    else:
        source = "generate_series(1, %s)"
    return (
        f"INSERT INTO {quote(Job._meta.db_table)} ({columns}) "
        f"SELECT {', '.join(selected)} FROM {source} "
        f"RETURNING {quote(Job._meta.pk.column)}"
    )


def _isoformat(value: object) -> str:
    """The job's datetimes, for the server to read back exactly."""
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not a job column's type")
