"""The overview's chart: jobs succeeded and failed per hour, last 24 hours."""

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from async_jobs import Job
from async_jobs.charts import hourly_chart, nice_ticks
from async_jobs.overview import hourly_outcomes

pytestmark = pytest.mark.django_db


def finished_job(status: str, ago: timedelta, **fields) -> Job:
    now = timezone.now()
    return Job.objects.create(
        name="shop.tasks.noop", status=status, finished=now - ago, **fields
    )


def test_jobs_are_counted_in_the_hour_they_finished():
    now = timezone.now()
    this_hour = now.replace(minute=0, second=0, microsecond=0)
    since_hour = now - this_hour
    for _ in range(3):
        finished_job(Job.Status.SUCCEEDED, timedelta(0))
    finished_job(Job.Status.FAILED, timedelta(0))
    finished_job(Job.Status.SUCCEEDED, since_hour + timedelta(minutes=30))  # 1h ago
    finished_job(Job.Status.FAILED, since_hour + timedelta(hours=22, minutes=1))
    # Not counted: too old, cancelled, or not finished.
    finished_job(Job.Status.SUCCEEDED, since_hour + timedelta(hours=23, minutes=1))
    finished_job(Job.Status.CANCELLED, timedelta(0))
    Job.objects.create(name="shop.tasks.noop")

    with CaptureQueriesContext(connection) as queries:
        outcomes = hourly_outcomes()

    assert len(queries) == 1
    assert len(outcomes.hours) == 24
    assert outcomes.hours[-1] == this_hour
    assert outcomes.hours[0] == this_hour - timedelta(hours=23)
    assert outcomes.succeeded[-1] == 3 and outcomes.failed[-1] == 1
    assert outcomes.succeeded[-2] == 1 and outcomes.failed[-2] == 0
    assert outcomes.failed[0] == 1
    assert sum(outcomes.succeeded) == 4 and sum(outcomes.failed) == 2


@override_settings(TIME_ZONE="Asia/Kolkata")  # UTC+05:30: hours on the half hour
def test_hours_are_those_of_the_current_time_zone():
    outcomes = hourly_outcomes()
    starts = [timezone.localtime(hour) for hour in outcomes.hours]
    assert all((hour.minute, hour.second) == (0, 0) for hour in starts)
    assert all(hour.utcoffset() == timedelta(hours=5, minutes=30) for hour in starts)

    local_now = timezone.localtime()
    finished_job(Job.Status.SUCCEEDED, timedelta(minutes=local_now.minute))
    assert hourly_outcomes().succeeded[-1] == 1


@override_settings(USE_TZ=False)
def test_without_time_zone_support_too():
    Job.objects.create(
        name="shop.tasks.noop", status=Job.Status.FAILED, finished=timezone.now()
    )
    outcomes = hourly_outcomes()
    assert outcomes.hours[-1].tzinfo is None
    assert outcomes.failed[-1] == 1


def test_nice_ticks():
    assert nice_ticks(0) == [0, 1]
    assert nice_ticks(7) == [0, 2, 4, 6, 8]
    assert nice_ticks(120) == [0, 50, 100, 150]
    assert nice_ticks(33_333) == [0, 10_000, 20_000, 30_000, 40_000]


def test_the_chart_draws_each_hour_and_says_its_figures():
    finished_job(Job.Status.SUCCEEDED, timedelta(0))
    finished_job(Job.Status.SUCCEEDED, timedelta(0))
    finished_job(Job.Status.FAILED, timedelta(0))

    svg = str(hourly_chart(hourly_outcomes()))

    assert svg.count("<title>") == 24
    assert ": 2 succeeded, 1 failed</title>" in svg
    assert svg.count('<rect class="succeeded"') == 1  # one hour had jobs
    assert svg.count('<rect class="failed"') == 1
    assert (
        'aria-label="Jobs finished per hour over the last 24 hours: 2 succeeded, 1 failed."'
        in svg
    )
    # The failed part sits on top of the succeeded part, as tall as its share.
    bar = dict(
        re.findall(r'<rect class="(succeeded|failed)" [^>]*height="([\d.]+)"', svg)
    )
    assert float(bar["succeeded"]) == pytest.approx(2 * float(bar["failed"]), abs=0.2)


def test_an_empty_day_says_so():
    svg = str(hourly_chart(hourly_outcomes()))
    assert "No job finished in the last 24 hours." in svg
    assert '<rect class="succeeded"' not in svg


def test_the_overview_page_shows_the_chart_without_javascript(admin_client):
    finished_job(Job.Status.FAILED, timedelta(hours=2))

    response = admin_client.get(reverse("admin:async_jobs_job_overview"))

    html = response.content.decode()
    assert response.status_code == 200
    assert "Jobs finished per hour, last 24 hours" in html
    assert '<figure class="async-jobs-chart"><svg' in html
    assert "0 succeeded, 1 failed</title>" in html
    assert "<script" not in html.split('id="content-main"')[1]


@pytest.mark.django_db(transaction=True)
def test_the_query_reads_a_range_of_the_finished_index(on_postgres):
    if not on_postgres:
        pytest.skip("the plan is PostgreSQL's")
    Job.objects.bulk_create(
        Job(
            name="shop.tasks.noop",
            status=Job.Status.SUCCEEDED,
            finished=timezone.now() - timedelta(days=n % 60),
        )
        for n in range(20_000)
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE async_jobs_job")
    with CaptureQueriesContext(connection) as queries:
        hourly_outcomes()
    [query] = queries
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + query["sql"])
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "async_jobs_job_finished_idx" in plan, plan
    assert "Seq Scan" not in plan, plan
