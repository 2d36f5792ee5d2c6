"""Prometheus: the scrape view, flush_queue --metrics-port, and what they report.

Scraped for real: the view through Django's test client, a worker's port by an
HTTP GET to a real ``flush_queue --loop`` process. Counters are compared
before and after, since they live as long as the process.
"""

import signal
import subprocess
import sys
import time
import urllib.request
from datetime import timedelta

import pytest
from django.test import override_settings
from prometheus_client.parser import text_string_to_metric_families
from testproject.urls import METRICS_TOKEN

from async_jobs import Job, schedule, views
from async_jobs.metrics import QueueCollector, read_queues

from .conftest import PROJECT_DIR, wait_until, worker_env

pytestmark = pytest.mark.django_db(transaction=True)

VIEW = "/jobs/metrics"
TOKEN_VIEW = "/scrape/metrics"


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a scrape, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(scraped: dict, name: str, **labels: str) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def fresh_gauges(monkeypatch):
    """The view's queue gauges read anew at each scrape."""
    monkeypatch.setattr(views._queues, "max_age", 0)


@pytest.fixture
def scrape(admin_client, fresh_gauges):
    def scrape() -> dict:
        response = admin_client.get(VIEW)
        assert response.status_code == 200
        assert response["Content-Type"].startswith("text/plain; version=")
        return samples(response.content.decode())

    return scrape


# The view: never open


def test_anonymous_and_non_staff_users_are_refused(client, django_user_model):
    assert client.get(VIEW).status_code == 403
    user = django_user_model.objects.create_user("clerk", password="pw")
    client.force_login(user)
    assert client.get(VIEW).status_code == 403


def test_a_bearer_token_opens_the_token_view_only(client):
    bearer = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    response = client.get(TOKEN_VIEW, headers=bearer)
    assert response.status_code == 200
    assert b"async_jobs_queue_query_ok 1.0" in response.content

    assert client.get(VIEW, headers=bearer).status_code == 403  # staff only
    wrong = {"Authorization": f"Bearer {METRICS_TOKEN}x"}
    refused = client.get(TOKEN_VIEW, headers=wrong)
    assert refused.status_code == 403
    assert refused["WWW-Authenticate"] == "Bearer"
    assert client.get(TOKEN_VIEW).status_code == 403


def test_a_short_or_empty_token_is_refused_at_start_up():
    from django.core.exceptions import ImproperlyConfigured

    for token in ("", "short"):
        with pytest.raises(ImproperlyConfigured, match="at least 16 characters"):
            views.MetricsView.as_view(token=token)


# The view: counters and gauges


def test_attempts_are_counted_by_queue_function_and_outcome(scrape, flush_queue):
    before = scrape()
    for label in ("a", "b"):
        schedule("shop.tasks.record", args=[label], meta={"queue": "mail"})
    failing = schedule(
        "shop.tasks.write_then_fail", args=["c"], meta={"max_attempts": 2}
    )
    flush_queue()
    Job.objects.filter(pk=failing.pk).update(run_after=failing.created)
    flush_queue()
    after = scrape()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    attempts = "async_jobs_attempts_total"
    record = {"queue": "mail", "function": "shop.tasks.record"}
    fail = {"queue": "default", "function": "shop.tasks.write_then_fail"}
    assert delta(attempts, **record, outcome="succeeded") == 2
    assert delta(attempts, **fail, outcome="retry") == 1
    assert delta(attempts, **fail, outcome="failed") == 1
    assert delta(attempts, **fail, outcome="succeeded") == 0
    assert delta("async_jobs_attempt_duration_seconds_count", **record) == 2
    assert delta("async_jobs_attempt_duration_seconds_count", **fail) == 2
    assert delta("async_jobs_wait_seconds_count", queue="mail") == 2
    assert delta("async_jobs_wait_seconds_count", queue="default") == 2


def test_labels_name_functions_never_jobs(scrape, flush_queue):
    job = schedule("shop.tasks.record", args=["x"])
    flush_queue()
    for name, labels in scrape():
        if not name.startswith("async_jobs_"):
            continue  # prometheus_client's own, about the process
        for label, label_value in labels:
            assert label in ("queue", "function", "outcome", "le"), label
            assert label_value != str(job.pk)


def test_queue_gauges(scrape, flush_queue):
    schedule("shop.tasks.noop", run_after=timedelta(minutes=-10))
    schedule("shop.tasks.noop", run_after=timedelta(minutes=-1))
    schedule("shop.tasks.noop", run_after=timedelta(hours=1))
    schedule("shop.tasks.noop", meta={"queue": "mail"}, run_after=timedelta(hours=1))
    done = schedule("shop.tasks.noop", meta={"queue": "other"})
    done.execute()

    scraped = scrape()

    assert value(scraped, "async_jobs_queue_query_ok") == 1
    assert value(scraped, "async_jobs_queue_pending_jobs", queue="default") == 3
    assert value(scraped, "async_jobs_queue_due_jobs", queue="default") == 2
    age = value(scraped, "async_jobs_queue_oldest_due_age_seconds", queue="default")
    assert 600 <= age < 660
    assert value(scraped, "async_jobs_queue_pending_jobs", queue="mail") == 1
    assert value(scraped, "async_jobs_queue_due_jobs", queue="mail") == 0
    assert value(scraped, "async_jobs_queue_oldest_due_age_seconds", queue="mail") == 0
    assert value(scraped, "async_jobs_queue_running_jobs", queue="default") == 0
    # A queue with nothing left to run has no gauges, unless it is configured.
    assert ("async_jobs_queue_pending_jobs", frozenset({("queue", "other")})) not in (
        scraped
    )
    with override_settings(ASYNC_JOBS={"QUEUES": ["default", "mail", "other"]}):
        scraped = scrape()
    assert value(scraped, "async_jobs_queue_pending_jobs", queue="other") == 0
    assert ("async_jobs_queue_due_jobs", frozenset({("queue", "other")})) in scraped


def test_the_gauges_query_is_cached_for_a_while():
    collector = QueueCollector(max_age=0.5)

    def pending() -> float:
        return value(
            samples_of(collector), "async_jobs_queue_pending_jobs", queue="default"
        )

    assert pending() == 0
    schedule("shop.tasks.noop")
    assert pending() == 0  # served from the cache
    time.sleep(0.6)
    assert pending() == 1


def samples_of(collector: QueueCollector) -> dict:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in collector.collect()
        for sample in family.samples
    }


def test_a_failed_query_still_serves_the_counters(scrape, monkeypatch):
    from django.db import DatabaseError

    def broken(using=None):
        raise DatabaseError("the database is away")

    monkeypatch.setattr("async_jobs.metrics.read_queues", broken)
    scraped = scrape()
    assert value(scraped, "async_jobs_queue_query_ok") == 0
    assert not any(name.startswith("async_jobs_queue_pending") for name, _ in scraped)
    assert any(name.startswith("python_") for name, _ in scraped)


def test_a_job_held_by_a_worker_counts_as_running(tmp_path, start_manage, on_postgres):
    if not on_postgres:
        pytest.skip("SQLite has no row locks to tell a running job by")
    started, release = tmp_path / "started", tmp_path / "release"
    schedule("shop.tasks.write_then_hold", args=["held", str(started), str(release)])
    schedule("shop.tasks.noop")
    worker = start_manage("flush_queue", "--jobs", "1")
    wait_until(started.exists, "the job to start", process=worker)
    try:
        [figures] = read_queues()[1]
        assert (figures.pending, figures.due, figures.running) == (2, 2, 1)
    finally:
        release.touch()
    assert worker.wait(timeout=30) == 0
    [figures] = read_queues()[1]
    assert (figures.pending, figures.due, figures.running) == (1, 1, 0)


# A worker's own port


def start_worker_with_metrics(start_manage, *args: str) -> tuple:
    worker = start_manage(
        "flush_queue", "--loop", "--sleep", "0.1", "--metrics-port", "0", *args
    )
    # Its first lines: that it waits for jobs, and where it serves.
    lines = [worker.stdout.readline() for _ in range(2)]
    [line] = [line for line in lines if line.startswith("Serving")] or [""]
    if not line.startswith("Serving Prometheus metrics at "):
        worker.kill()
        raise AssertionError("".join(lines) + worker.communicate()[1])
    return worker, line.split(" at ")[1].strip()


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read().decode()


def test_a_worker_serves_its_metrics_on_its_port(start_manage):
    worker, url = start_worker_with_metrics(start_manage)
    assert url.startswith("http://127.0.0.1:")  # this machine only, by default
    jobs = [schedule("shop.tasks.record", args=[str(n)]) for n in range(3)]
    schedule("shop.tasks.noop", run_after=timedelta(hours=1))

    def all_done() -> bool:
        return Job.objects.filter(
            pk__in=[job.pk for job in jobs], status=Job.Status.SUCCEEDED
        ).count() == len(jobs)

    wait_until(all_done, "the jobs to run", process=worker)
    record = {"queue": "default", "function": "shop.tasks.record"}

    def counted() -> bool:  # the counter moves once the outcome has committed
        scraped = samples(get(url)[1])
        return (
            value(scraped, "async_jobs_attempts_total", **record, outcome="succeeded")
            == 3
        )

    wait_until(counted, "the worker to count 3 attempts", timeout=10, process=worker)
    status, text = get(url)
    assert status == 200
    scraped = samples(text)
    assert value(scraped, "async_jobs_attempt_duration_seconds_count", **record) == 3
    assert value(scraped, "async_jobs_wait_seconds_count", queue="default") == 3
    assert value(scraped, "async_jobs_queue_pending_jobs", queue="default") == 1
    assert value(scraped, "async_jobs_queue_due_jobs", queue="default") == 0
    assert value(scraped, "process_start_time_seconds") > 0  # this process's
    with pytest.raises(urllib.error.HTTPError) as missing:
        get(url.replace("/metrics", "/elsewhere"))
    assert missing.value.code == 404

    worker.send_signal(signal.SIGTERM)
    out, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    assert "Ran 3 jobs" in out
    with pytest.raises(urllib.error.URLError):
        get(url)


def test_each_worker_counts_its_own_attempts(start_manage):
    first, first_url = start_worker_with_metrics(start_manage)
    second, second_url = start_worker_with_metrics(start_manage)
    assert first_url != second_url
    jobs = [schedule("shop.tasks.record", args=[str(n)]) for n in range(6)]
    wait_until(
        lambda: (
            not Job.objects.filter(
                pk__in=[job.pk for job in jobs], status=Job.Status.PENDING
            ).exists()
        ),
        "the jobs to run",
        process=first,
    )
    labels = {
        "queue": "default",
        "function": "shop.tasks.record",
        "outcome": "succeeded",
    }

    def total() -> float:
        return sum(
            value(samples(get(url)[1]), "async_jobs_attempts_total", **labels)
            for url in (first_url, second_url)
        )

    # What Prometheus' sum() over the two targets gives: every attempt once.
    wait_until(lambda: total() == 6, "the two workers' counters to sum to 6")
    for worker in (first, second):
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=30)


def test_metrics_port_needs_loop(run_manage):
    code, _, err = run_manage("flush_queue", "--metrics-port", "0")
    assert code == 1
    assert "--metrics-port only applies with --loop" in err
    code, _, err = run_manage("flush_queue", "--metrics-host", "0.0.0.0")
    assert code == 1
    assert "--metrics-host only applies with --metrics-port" in err


def test_a_port_in_use_is_a_clear_error(run_manage):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _out, err = run_manage(
            "flush_queue", "--loop", "--metrics-port", str(port)
        )
    assert code == 1
    assert f"Can't serve metrics on 127.0.0.1:{port}" in err


#: Makes both imports fail in the process, as if neither extra were installed.
WITHOUT_EXTRAS = (
    "import runpy, sys\n"
    "sys.modules['prometheus_client'] = sys.modules['opentelemetry'] = None\n"
)


def manage_without_extras(*args: str) -> subprocess.CompletedProcess:
    """manage.py in a process without the extras; prints what it loaded of them."""
    code = (
        f"{WITHOUT_EXTRAS}sys.argv = ['manage.py', *{list(args)!r}]\n"
        "try:\n"
        f"    runpy.run_path({str(PROJECT_DIR / 'manage.py')!r}, run_name='__main__')\n"
        "finally:\n"
        "    print('loaded:', sorted(name for name, module in sys.modules.items() if "
        "module is not None and name.startswith(('prometheus_client', "
        "'opentelemetry', 'async_jobs.metrics', 'async_jobs.tracing', "
        "'async_jobs.views'))))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        env=worker_env(DJANGO_SETTINGS_MODULE="testproject.settings"),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_without_the_extras_nothing_is_imported():
    job = schedule("shop.tasks.add", args=[2, 3])

    done = manage_without_extras("flush_queue")

    assert done.returncode == 0, done.stderr
    assert "loaded: []" in done.stdout
    job.refresh_from_db()
    assert (job.status, job.result) == (Job.Status.SUCCEEDED, 5)


def test_without_the_extra_the_port_is_refused():
    done = manage_without_extras("flush_queue", "--loop", "--metrics-port", "0")

    assert done.returncode == 1
    assert "--metrics-port needs prometheus_client" in done.stderr


def test_the_gauges_query_reads_the_unfinished_jobs_only(on_postgres):
    """Through the partial indexes, not a scan of the finished jobs."""
    if not on_postgres:
        pytest.skip("the plan is PostgreSQL's")
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    Job.objects.bulk_create(
        Job(name="shop.tasks.noop", status=Job.Status.SUCCEEDED) for _ in range(20_000)
    )
    schedule("shop.tasks.noop")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE async_jobs_job")
    with CaptureQueriesContext(connection) as queries:
        read_queues()
    [query] = queries
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + query["sql"])
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "async_jobs_job_claim_idx" in plan, plan
    assert "Seq Scan on async_jobs_job" not in plan, plan
