"""OpenTelemetry: a job's attempts are spans in the trace that scheduled it.

The SDK's in-memory exporter sees the spans; the worker is flush_queue run in
this process, as cron would run it.
"""

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode
from testproject.telemetry import configure_tracing

from async_jobs import Job, schedule, schedule_many

pytestmark = pytest.mark.django_db(transaction=True)

_exporter = InMemorySpanExporter()


@pytest.fixture
def spans():
    """The exporter of the process's tracer provider, emptied for this test."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        # Spans are exported as they end, for the test to see at once.
        configure_tracing(_exporter, processor=SimpleSpanProcessor)
    _exporter.clear()
    yield _exporter
    _exporter.clear()


@pytest.fixture
def tracer(spans):
    return trace.get_tracer("tests")


def finished(spans, name: str) -> list:
    return [span for span in spans.get_finished_spans() if span.name == name]


def test_a_job_runs_in_a_span_of_the_request_that_scheduled_it(
    spans, tracer, flush_queue
):
    with tracer.start_as_current_span("POST /checkout") as request:
        job = schedule("shop.tasks.record", args=["paid"])
    context = request.get_span_context()
    assert job.meta["traceparent"] == (
        f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    )
    job.refresh_from_db()
    assert "traceparent" in job.meta  # stored with the job

    flush_queue()

    [attempt] = finished(spans, "shop.tasks.record")
    assert attempt.context.trace_id == context.trace_id
    assert attempt.parent.span_id == context.span_id
    assert attempt.kind == SpanKind.CONSUMER
    assert dict(attempt.attributes) == {
        "async_jobs.job.id": job.pk,
        "async_jobs.job.function": "shop.tasks.record",
        "async_jobs.job.queue": "default",
        "async_jobs.job.attempt": 1,
        "async_jobs.job.outcome": "succeeded",
    }
    assert attempt.status.status_code == StatusCode.UNSET
    assert attempt.end_time >= attempt.start_time


def test_a_failed_attempt_records_its_exception(spans, tracer, flush_queue):
    with tracer.start_as_current_span("request"):
        job = schedule(
            "shop.tasks.write_then_fail", args=["x"], meta={"max_attempts": 2}
        )
    flush_queue()
    Job.objects.filter(pk=job.pk).update(run_after=job.created)
    flush_queue()

    first, second = sorted(
        finished(spans, "shop.tasks.write_then_fail"),
        key=lambda span: span.attributes["async_jobs.job.attempt"],
    )
    assert first.attributes["async_jobs.job.outcome"] == "retry"
    assert second.attributes["async_jobs.job.attempt"] == 2
    assert second.attributes["async_jobs.job.outcome"] == "failed"
    for span in (first, second):
        assert span.status.status_code == StatusCode.ERROR
        [event] = span.events
        assert event.name == "exception"
        assert event.attributes["exception.type"] == "RuntimeError"
        assert event.attributes["exception.message"] == "failed after writing x"
        assert span.parent.span_id == first.parent.span_id  # both the request's


def test_an_exception_that_cant_be_printed_still_ends_its_span(spans, flush_queue):
    # OpenTelemetry's record_exception() calls str() of it: the span was never
    # ended, so never exported.
    schedule("shop.tasks.raise_unprintable", args=["u"], meta={"max_attempts": 1})
    flush_queue()

    [span] = finished(spans, "shop.tasks.raise_unprintable")
    assert span.status.status_code == StatusCode.ERROR
    [event] = span.events
    assert event.attributes["exception.type"] == "Unprintable"
    assert event.attributes["exception.message"] == "<Unprintable.__str__() raised>"
    assert "raise Unprintable(label, how)" in event.attributes["exception.stacktrace"]


def test_spans_the_job_makes_are_children_of_its_attempt(spans, tracer, flush_queue):
    with tracer.start_as_current_span("request") as request:
        schedule("shop.tasks.traced", args=["inner"])
        schedule("shop.tasks.traced", args=["second"])
    flush_queue("--batch", "2")

    attempts = finished(spans, "shop.tasks.traced")
    inner = {span.attributes["label"]: span for span in finished(spans, "inside")}
    assert len(attempts) == 2
    for attempt in attempts:
        assert attempt.parent.span_id == request.get_span_context().span_id
    # In a batch too, each job's spans are children of its own attempt's.
    assert {inner["inner"].parent.span_id, inner["second"].parent.span_id} == {
        attempt.context.span_id for attempt in attempts
    }
    assert inner["inner"].parent.span_id != inner["second"].parent.span_id
    assert trace.get_current_span() is trace.INVALID_SPAN  # nothing left attached


def test_schedule_many_stores_the_context_too(spans, tracer, flush_queue):
    with tracer.start_as_current_span("request") as request:
        jobs = schedule_many(
            [{"function": "shop.tasks.record", "args": [label]} for label in "ab"]
        )
    assert {job.meta["traceparent"] for job in jobs} == {jobs[0].meta["traceparent"]}
    flush_queue()
    attempts = finished(spans, "shop.tasks.record")
    assert len(attempts) == 2
    assert {span.parent.span_id for span in attempts} == {
        request.get_span_context().span_id
    }


def test_outside_a_span_no_context_is_stored_and_the_attempt_is_a_root(
    spans, flush_queue
):
    job = schedule("shop.tasks.record", args=["cron"])
    assert "traceparent" not in job.meta
    flush_queue()
    [attempt] = finished(spans, "shop.tasks.record")
    assert attempt.parent is None


def test_a_repeating_job_links_to_the_span_that_scheduled_it(
    spans, tracer, flush_queue
):
    with tracer.start_as_current_span("request") as request:
        schedule("shop.tasks.noop", meta={"repeat": 3600})
    flush_queue()
    [attempt] = finished(spans, "shop.tasks.noop")
    assert attempt.parent is None
    assert attempt.context.trace_id != request.get_span_context().trace_id
    [link] = attempt.links
    assert link.context.span_id == request.get_span_context().span_id
    # The next occurrence keeps the link to the same request.
    following = Job.objects.get(status=Job.Status.PENDING)
    assert following.meta["traceparent"] == traceparent_of(request)


def traceparent_of(span) -> str:
    context = span.get_span_context()
    return (
        f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    )


def test_a_given_traceparent_is_kept_and_checked(spans, tracer, flush_queue):
    given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with tracer.start_as_current_span("request"):
        job = schedule("shop.tasks.noop", meta={"traceparent": given})
    assert job.meta["traceparent"] == given
    flush_queue()
    [attempt] = finished(spans, "shop.tasks.noop")
    assert attempt.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert attempt.parent.span_id == 0xB7AD6B7169203331

    with pytest.raises(ValueError, match=r"meta\['traceparent'\] is 'nope'"):
        schedule("shop.tasks.noop", meta={"traceparent": "nope"})


def test_a_job_run_from_a_request_with_execute_is_traced_too(spans, tracer):
    with tracer.start_as_current_span("schedule") as scheduling:
        job = schedule("shop.tasks.add", args=[1, 2])
    with tracer.start_as_current_span("admin runs it"):
        assert job.execute() == 3
    [attempt] = finished(spans, "shop.tasks.add")
    assert attempt.parent.span_id == scheduling.get_span_context().span_id


def test_an_attempt_whose_outcome_never_comes_ends_when_its_job_is_dropped(spans):
    """As when the worker's transaction is lost: no job_finished, the job stays
    pending; its span must still end, and stop being the current one."""
    import gc

    from django.utils import timezone

    from async_jobs.signals import job_started

    job = schedule("shop.tasks.noop")
    job.attempts, job.started = 1, timezone.now()  # as the worker sets them
    job_started.send(sender=Job, job=job)
    assert trace.get_current_span().name == "shop.tasks.noop"
    del job
    gc.collect()

    [attempt] = finished(spans, "shop.tasks.noop")
    assert attempt.attributes["async_jobs.job.outcome"] == "abandoned"
    assert attempt.status.status_code == StatusCode.ERROR
    assert trace.get_current_span() is trace.INVALID_SPAN
