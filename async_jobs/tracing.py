"""OpenTelemetry: follow a request into the jobs it scheduled.

Needs the ``opentelemetry`` extra (``opentelemetry-api``); the app imports this
module only when that is installed. ``schedule()`` stores the current trace
context in ``meta["traceparent"]``; each attempt then runs in a span, current
while the function runs (its own spans are children), whose parent is the
span that scheduled the job. An occurrence of a repeating job gets a trace of
its own, linked to that span instead: a series would make one endless trace.

The span starts with ``job_started`` and ends with ``job_finished``, once the
outcome has committed; it lasts as long as the attempt did.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from contextvars import Token
from dataclasses import dataclass

from django.dispatch import receiver
from opentelemetry import context, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from async_jobs import failures, traceparent
from async_jobs.execution import Outcome
from async_jobs.models import Job
from async_jobs.signals import job_finished, job_started

logger = logging.getLogger("async_jobs")

_propagator = TraceContextTextMapPropagator()
_tracer = trace.get_tracer("async_jobs")


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span, or None outside a valid one."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


traceparent.current = current_traceparent


@dataclass
class _Attempt:
    span: trace.Span
    started_ns: int
    thread: int
    token: Token[Context] | None = None  # while its span is the current one


#: Attempts started and not yet finished, by id() of their Job instance.
_attempts: dict[int, _Attempt] = {}
_current = threading.local()  # .attempt: the attempt whose context is attached


def _detach(attempt: _Attempt) -> None:
    if attempt.token is not None and attempt.thread == threading.get_ident():
        context.detach(attempt.token)
        attempt.token = None
        if getattr(_current, "attempt", None) is attempt:
            _current.attempt = None


def _start(job: Job) -> None:
    # The previous job of a batch has returned: its span is no longer current.
    previous = getattr(_current, "attempt", None)
    if previous is not None:
        _detach(previous)
    scheduled = None
    links = []
    if "traceparent" in job.meta:
        carried = _propagator.extract({"traceparent": job.meta["traceparent"]})
        if "repeat" in job.meta:
            links = [Link(trace.get_current_span(carried).get_span_context())]
            scheduled = context.Context()  # a root: a trace of its own
        else:
            scheduled = carried
    started_ns = time.time_ns()
    span = _tracer.start_span(
        job.name,
        context=scheduled,
        kind=SpanKind.CONSUMER,
        links=links,
        start_time=started_ns,
        attributes={
            "async_jobs.job.id": job.pk,
            "async_jobs.job.function": job.name,
            "async_jobs.job.queue": job.queue,
            "async_jobs.job.attempt": job.attempts,
        },
    )
    attempt = _Attempt(span, started_ns, threading.get_ident())
    attempt.token = context.attach(trace.set_span_in_context(span))
    _current.attempt = attempt
    key = id(job)
    _attempts[key] = attempt
    # If the outcome never comes (the worker's transaction was lost, so the
    # job stays pending and runs again), end the span when the job is dropped.
    weakref.finalize(job, _abandoned, key, attempt)


def _abandoned(key: int, attempt: _Attempt) -> None:
    if _attempts.get(key) is not attempt:
        return  # finished normally
    del _attempts[key]
    _detach(attempt)
    attempt.span.set_attribute("async_jobs.job.outcome", "abandoned")
    attempt.span.set_status(
        Status(StatusCode.ERROR, "the attempt's transaction was rolled back")
    )
    attempt.span.end()


@receiver(job_started, dispatch_uid="async_jobs.tracing.started")
def _started(sender: type[Job], job: Job, **kwargs: object) -> None:
    # Inside the job's transaction, where a receiver that raises fails the
    # attempt: tracing must never do that.
    try:
        _start(job)
    except Exception:
        logger.exception("Could not start the span of job %s", job.pk)


@receiver(job_finished, dispatch_uid="async_jobs.tracing.finished")
def _finished(sender: type[Job], job: Job, outcome: Outcome, **kwargs: object) -> None:
    attempt = _attempts.pop(id(job), None)
    if attempt is None:
        return  # started before tracing was plugged in, or its start failed
    # A receiver that raises would keep the ones after it from being called.
    try:
        _end(attempt, outcome)
    except Exception:
        logger.exception("Could not end the span of job %s", job.pk)


def _end(attempt: _Attempt, outcome: Outcome) -> None:
    _detach(attempt)
    span = attempt.span
    span.set_attribute("async_jobs.job.outcome", outcome.status)
    if outcome.exception is not None:
        # What record_exception() records, worded here: its str() may raise.
        exc = outcome.exception
        span.add_event(
            "exception",
            {
                "exception.type": type(exc).__name__,
                "exception.message": failures.message(exc),
                "exception.stacktrace": failures.traceback_text(exc),
                "exception.escaped": "False",
            },
        )
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
    span.end(end_time=attempt.started_ns + int(outcome.duration * 1e9))
