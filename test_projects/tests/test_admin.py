"""The Job admin, through Django's test client: list, filters, search, detail,
actions and permissions."""

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.db import connection, connections, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from shop.models import Mark

from async_jobs import Error, Job, schedule
from async_jobs.admin import EstimatedCountPaginator, NameFilter, QueueFilter

from .conftest import finish, wait_until

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:async_jobs_job_changelist"
OVERVIEW = "admin:async_jobs_job_overview"


def changelist(client, **params):
    return client.get(reverse(CHANGELIST), params)


def listed(response) -> list[int]:
    return [job.pk for job in response.context["cl"].result_list]


def failed_job(label: str = "x") -> Job:
    job = schedule("shop.tasks.write_then_fail", args=[label], meta={"max_attempts": 1})
    with pytest.raises(RuntimeError):
        job.execute()
    return job


def succeeded_job() -> Job:
    job = schedule("shop.tasks.add", args=[1, 2])
    job.execute()
    return job


def run_action(client, action: str, jobs, **extra):
    return client.post(
        reverse(CHANGELIST),
        {"action": action, "_selected_action": [job.pk for job in jobs], **extra},
        follow=True,
    )


def message_texts(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


@pytest.fixture
def viewer(client, django_user_model):
    """A staff user who may view jobs, and nothing more."""
    user = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_job"))
    client.force_login(user)
    return client


# The changelist


def test_changelist_lists_newest_first_with_its_columns(admin_client):
    jobs = [
        schedule("shop.tasks.noop"),
        schedule("shop.tasks.add", args=[1, 2], meta={"queue": "mail"}),
        failed_job(),
    ]

    response = changelist(admin_client)

    assert response.status_code == 200
    assert listed(response) == [job.pk for job in reversed(jobs)]
    cl = response.context["cl"]
    assert list(cl.list_display)[1:] == [
        "id",
        "name",
        "queue",
        "status_display",
        "priority",
        "attempts",
        "run_after",
        "started",
        "worker_display",
        "finished",
    ]
    assert cl.paginator.count == 3
    html = response.content.decode()
    assert "shop.tasks.write_then_fail" in html
    assert reverse(OVERVIEW) in html  # the "Queue overview" button
    assert "_facets" not in html  # counts per filter choice would scan the table
    assert "Add job" not in html


def test_changelist_counts_are_bounded_and_the_order_is_indexed(
    admin_client, monkeypatch, on_postgres
):
    """On PostgreSQL no COUNT(*) or DISTINCT over the whole table, whatever its size."""
    monkeypatch.setattr(EstimatedCountPaginator, "exact_limit", 3)
    monkeypatch.setattr(NameFilter, "rows", 3)
    monkeypatch.setattr(QueueFilter, "rows", 3)
    for n in range(5):
        schedule("shop.tasks.add", args=[n, n], meta={"queue": f"q{n}"})

    with CaptureQueriesContext(connection) as queries:
        response = changelist(admin_client)

    assert response.status_code == 200
    sql = [query["sql"] for query in queries if "async_jobs_job" in query["sql"]]
    counts = [query for query in sql if "COUNT(" in query.upper()]
    assert "LIMIT 4" in counts[0]  # counts exactly up to the limit, no further
    if on_postgres:
        assert len(counts) == 1, counts  # then estimates
    else:
        assert len(counts) == 2, counts  # then counts: small sites, fast enough
    distinct = [query for query in sql if "DISTINCT" in query]
    assert len(distinct) == 2 and all(">=" in query for query in distinct), distinct
    page = next(
        query
        for query in sql
        if '"async_jobs_job"."status"' in query and not query.startswith("EXPLAIN")
    )
    assert page.endswith('ORDER BY "async_jobs_job"."id" DESC'), page
    assert '"async_jobs_job"."kwargs"' not in page  # not shown, not read
    cl = response.context["cl"]
    # Only the newest three jobs feed the filter's choices.
    queue_choices = [choice["display"] for choice in cl.filter_specs[1].choices(cl)][1:]
    assert queue_choices == ["q2", "q3", "q4"]
    if on_postgres:
        # Past the exact limit, PostgreSQL's estimate; never below what was seen.
        assert cl.paginator.estimated
        assert cl.paginator.count >= 4
        assert "That count is PostgreSQL's estimate" in response.content.decode()
    else:
        assert not cl.paginator.estimated
        assert cl.paginator.count == 5


def test_filter_by_status_queue_and_name(admin_client):
    pending = schedule("shop.tasks.noop")
    mail = schedule("shop.tasks.noop", meta={"queue": "mail"})
    added = succeeded_job()
    failed = failed_job()

    assert listed(changelist(admin_client, status__exact="failed")) == [failed.pk]
    assert listed(changelist(admin_client, status__exact="pending")) == [
        mail.pk,
        pending.pk,
    ]
    assert listed(changelist(admin_client, queue="mail")) == [mail.pk]
    assert listed(changelist(admin_client, name="shop.tasks.add")) == [added.pk]
    assert listed(
        changelist(admin_client, name="shop.tasks.noop", queue="default")
    ) == [pending.pk]


def test_filter_by_date(admin_client):
    old = schedule("shop.tasks.noop")
    new = schedule("shop.tasks.noop")
    Job.objects.filter(pk=old.pk).update(created=timezone.now() - timedelta(days=30))
    cl = changelist(admin_client).context["cl"]
    created = next(spec for spec in cl.filter_specs if spec.title == "created")
    past_week = next(
        choice for choice in created.choices(cl) if choice["display"] == "Past 7 days"
    )

    response = admin_client.get(reverse(CHANGELIST) + past_week["query_string"])

    assert listed(response) == [new.pk]


@override_settings(ASYNC_JOBS={"QUEUES": ["default", "mail", "reports"]})
def test_queue_filter_offers_the_configured_queues(admin_client):
    schedule("shop.tasks.noop")

    response = changelist(admin_client)

    cl = response.context["cl"]
    queue_filter = next(spec for spec in cl.filter_specs if spec.title == "queue")
    choices = [choice["display"] for choice in queue_filter.choices(cl)]
    assert choices == ["All", "default", "mail", "reports"]


def test_search_by_name_fragment_and_by_id(admin_client):
    receipt = schedule("shop.tasks.send_receipt", args=[1])
    added = schedule("shop.tasks.add", args=[1, 2])

    assert listed(changelist(admin_client, q="receipt")) == [receipt.pk]
    assert listed(changelist(admin_client, q="TASKS.ADD")) == [added.pk]
    assert listed(changelist(admin_client, q=str(added.pk))) == [added.pk]
    assert listed(changelist(admin_client, q=f" {receipt.pk} ")) == [receipt.pk]
    assert listed(changelist(admin_client, q="nothing-like-it")) == []


# The detail page


def test_detail_shows_the_call_and_its_errors_readably(admin_client):
    job = schedule(
        "shop.tasks.write_then_fail", args=["<b>bold</b>"], meta={"max_attempts": 2}
    )
    for _ in range(2):
        with pytest.raises(RuntimeError):
            Job.objects.get(pk=job.pk).execute()

    response = admin_client.get(reverse("admin:async_jobs_job_change", args=[job.pk]))

    assert response.status_code == 200
    html = response.content.decode()
    assert "shop.tasks.write_then_fail" in html
    assert (
        '<pre class="async-jobs-json">[\n  &quot;&lt;b&gt;bold&lt;/b&gt;&quot;\n]'
        in html
    )
    assert html.count('<pre class="async-jobs-traceback">Traceback') == 2
    assert "RuntimeError: failed after writing &lt;b&gt;bold&lt;/b&gt;" in html
    assert (
        "in write_then_fail\n    raise RuntimeError(f&quot;failed after writing" in html
    )
    # Nothing of the job can be edited, and there is no form to save.
    for field in ("name", "args", "kwargs", "meta", "status", "run_after", "group"):
        assert f'name="{field}"' not in html
    assert 'name="_save"' not in html


def test_detail_shows_the_group_and_unique_key(admin_client):
    grouped = schedule("shop.tasks.noop", meta={"group": "import-42"})
    unique = schedule("shop.tasks.noop", meta={"unique": True})

    def page(job):
        url = reverse("admin:async_jobs_job_change", args=[job.pk])
        return admin_client.get(url).content.decode()

    assert f"Group import-42 #{grouped.group_id}" in page(grouped)
    assert unique.unique_key in page(unique)


def test_showing_a_pending_job_does_not_run_it(admin_client):
    """A job is callable, and templates call what they are given, unless told."""
    job = schedule("shop.tasks.record", args=["ran"])

    response = admin_client.get(reverse("admin:async_jobs_job_change", args=[job.pk]))

    assert response.status_code == 200
    assert "shop.tasks.record #" in response.content.decode()  # {{ original }}
    job.refresh_from_db()
    assert (job.status, job.attempts) == (Job.Status.PENDING, 0)
    assert not Mark.objects.exists()


def test_a_job_can_not_be_changed_or_added_through_the_admin(admin_client):
    job = schedule("shop.tasks.add", args=[1, 2])

    response = admin_client.post(
        reverse("admin:async_jobs_job_change", args=[job.pk]),
        {"name": "os.system", "args": '["touch /tmp/x"]', "kwargs": "{}"},
    )
    assert response.status_code == 403
    assert admin_client.get(reverse("admin:async_jobs_job_add")).status_code == 403
    job.refresh_from_db()
    assert (job.name, job.args) == ("shop.tasks.add", [1, 2])


# Actions


def test_cancel_action_cancels_pending_jobs_only(admin_client):
    pending = [schedule("shop.tasks.noop") for _ in range(2)]
    done = succeeded_job()

    response = run_action(admin_client, "cancel_jobs", [*pending, done])

    assert response.status_code == 200
    for job in pending:
        job.refresh_from_db()
        assert job.status == Job.Status.CANCELLED
        assert job.finished is not None
    done.refresh_from_db()
    assert done.status == Job.Status.SUCCEEDED
    assert message_texts(response) == [
        "Cancelled 2 jobs.",
        "1 left as they were (only a pending job can be cancelled): "
        f"#{done.pk} (succeeded).",
    ]


def test_run_again_action_requeues_failed_and_cancelled_jobs_keeping_errors(
    admin_client,
):
    failed = failed_job()
    cancelled = schedule("shop.tasks.noop", run_after=timedelta(days=1))
    cancelled.cancel()
    pending = schedule("shop.tasks.noop", run_after=timedelta(days=1))
    before = timezone.now()

    response = run_action(admin_client, "requeue_jobs", [failed, cancelled, pending])

    for job in (failed, cancelled):
        job.refresh_from_db()
        assert job.status == Job.Status.PENDING
        assert job.attempts == 0
        assert job.finished is None and job.started is None
        assert before <= job.run_after <= timezone.now()
    assert failed.errors.count() == 1
    pending.refresh_from_db()
    assert pending.run_after > timezone.now() + timedelta(hours=23)
    assert message_texts(response) == [
        "Queued again 2 jobs.",
        "1 left as they were (only a failed or cancelled job can be run again): "
        f"#{pending.pk} (pending).",
    ]


def test_run_again_action_names_a_pending_twin(admin_client):
    first = schedule("shop.tasks.add", args=[1, 2], meta={"unique": True})
    first.cancel()
    twin = schedule("shop.tasks.add", args=[1, 2], meta={"unique": True})

    response = run_action(admin_client, "requeue_jobs", [first])

    assert message_texts(response) == [
        "Queued again 0 jobs.",
        f"Job {first.pk} is unique and job {twin.pk} with the same key is pending; "
        "it can run again once that one has run.",
    ]
    first.refresh_from_db()
    assert first.status == Job.Status.CANCELLED


def test_delete_action_deletes_jobs_and_their_errors(admin_client):
    failed = failed_job()
    kept = schedule("shop.tasks.noop")

    confirm = admin_client.post(
        reverse(CHANGELIST),
        {"action": "delete_selected", "_selected_action": [failed.pk]},
    )
    assert confirm.status_code == 200
    assert Job.objects.filter(pk=failed.pk).exists()  # not before "Yes"
    response = run_action(admin_client, "delete_selected", [failed], post="yes")

    assert response.status_code == 200
    assert list(Job.objects.values_list("pk", flat=True)) == [kept.pk]
    assert not Error.objects.exists()


@pytest.mark.parametrize("how", ["action", "page"])
def test_deleting_a_groups_last_pending_job_finishes_the_group(admin_client, how):
    done = schedule("shop.tasks.noop", meta={"group": "batch"})
    dropped = schedule("shop.tasks.noop", meta={"group": "batch"})
    report = schedule("shop.tasks.report_receipts", meta={"completes": "batch"})
    done.execute()

    if how == "action":
        run_action(admin_client, "delete_selected", [dropped], post="yes")
    else:
        url = reverse("admin:async_jobs_job_delete", args=[dropped.pk])
        admin_client.post(url, {"post": "yes"})

    assert not Job.objects.filter(pk=dropped.pk).exists()
    assert dropped.group_id == done.group_id
    done.group.refresh_from_db()
    assert done.group.finished is not None
    report.refresh_from_db()
    assert report.run_after == done.group.finished  # released, due now


def test_a_user_who_may_only_view_gets_no_actions(viewer):
    pending = schedule("shop.tasks.noop")
    failed = failed_job()

    response = changelist(viewer)
    assert response.status_code == 200
    assert listed(response) == [failed.pk, pending.pk]
    assert "action" not in response.context["cl"].model_admin.get_actions(
        response.wsgi_request
    )
    assert 'name="action"' not in response.content.decode()

    for action, job in (
        ("cancel_jobs", pending),
        ("requeue_jobs", failed),
        ("delete_selected", failed),
    ):
        run_action(viewer, action, [job], post="yes")
    pending.refresh_from_db()
    failed.refresh_from_db()
    assert pending.status == Job.Status.PENDING
    assert failed.status == Job.Status.FAILED
    # The detail page and its errors are readable.
    detail = viewer.get(reverse("admin:async_jobs_job_change", args=[failed.pk]))
    assert detail.status_code == 200
    assert "async-jobs-traceback" in detail.content.decode()


def test_a_staff_user_without_permission_sees_nothing(client, django_user_model):
    user = django_user_model.objects.create_user("nobody", password="pw", is_staff=True)
    client.force_login(user)
    job = schedule("shop.tasks.noop")

    assert changelist(client).status_code == 403
    assert client.get(reverse(OVERVIEW)).status_code == 403
    assert run_action(client, "cancel_jobs", [job]).status_code == 403
    job.refresh_from_db()
    assert job.status == Job.Status.PENDING


def test_action_permission_follows_the_change_permission(viewer, django_user_model):
    job = schedule("shop.tasks.noop")
    user = django_user_model.objects.get(username="viewer")
    user.user_permissions.add(Permission.objects.get(codename="change_job"))

    run_action(viewer, "cancel_jobs", [job])

    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED


# The overview page


def test_overview_page_shows_each_queue_with_links(admin_client):
    schedule("shop.tasks.noop", run_after=timezone.now() - timedelta(minutes=5))
    schedule("shop.tasks.noop", meta={"queue": "mail"}, run_after=timedelta(hours=1))
    failed_job()

    response = admin_client.get(reverse(OVERVIEW))

    assert response.status_code == 200
    html = response.content.decode()
    rows = {row["queue"]: row for row in response.context["rows"]}
    assert set(rows) == {"default", "mail"}
    assert rows["default"]["due"] == 1
    assert rows["default"]["oldest_due"].startswith("5m ")
    assert rows["default"]["failed_recently"] == 1
    assert rows["mail"]["oldest_due"] == "—"
    failed_link = f'{reverse(CHANGELIST)}?queue=default&amp;status__exact=failed">1</a>'
    assert failed_link in html


# A job a worker is running right now


@pytest.mark.django_db(transaction=True)
def test_actions_skip_a_job_a_worker_is_running(admin_client, on_postgres):
    if not on_postgres:
        pytest.skip("SQLite has no row locks; its writers queue behind each other")
    running = schedule("shop.tasks.noop")
    idle = schedule("shop.tasks.noop")
    locked, release = threading.Event(), threading.Event()

    def worker():
        try:
            with transaction.atomic():
                Job.objects.select_for_update().get(pk=running.pk)
                locked.set()
                release.wait(timeout=30)
        finally:
            connections.close_all()

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        assert locked.wait(timeout=10)
        response = run_action(admin_client, "cancel_jobs", [running, idle])
    finally:
        release.set()
        thread.join(timeout=10)

    assert message_texts(response) == [
        "Cancelled 1 job.",
        f"1 left alone because a worker is running them right now: #{running.pk}.",
    ]
    running.refresh_from_db()
    idle.refresh_from_db()
    assert (running.status, idle.status) == (Job.Status.PENDING, Job.Status.CANCELLED)


def make_running(job: Job, lease_left: timedelta = timedelta(seconds=45)) -> Job:
    """The row of a non-atomic job whose worker holds its lease."""
    now = timezone.now()
    Job.objects.filter(pk=job.pk).update(
        status=Job.Status.RUNNING,
        worker="web1:4242",
        started=now - timedelta(minutes=2),
        heartbeat=now - timedelta(seconds=15),
        lease_expires=now + lease_left,
        attempts=1,
    )
    job.refresh_from_db()
    return job


def test_a_running_job_is_listed_with_its_worker_and_lease(admin_client):
    running = make_running(schedule("shop.tasks.noop"))
    lost = make_running(schedule("shop.tasks.noop"), timedelta(seconds=-30))
    pending = schedule("shop.tasks.noop")

    response = changelist(admin_client)

    html = response.content.decode()
    assert "web1:4242, heartbeat 15s ago, lease 4" in html  # 45s left, or 44s
    assert "lease expired 30s ago" in html or "lease expired 31s ago" in html
    response = changelist(admin_client, status__exact="running")
    assert listed(response) == [lost.pk, running.pk]
    choices = [
        choice["display"]
        for choice in response.context["cl"]
        .filter_specs[0]
        .choices(response.context["cl"])
    ]
    assert choices == ["All", "Pending", "Running", "Succeeded", "Failed", "Cancelled"]
    assert listed(changelist(admin_client, status__exact="pending")) == [pending.pk]


def test_a_running_jobs_page_shows_its_lease_read_only(admin_client):
    job = make_running(schedule("shop.tasks.noop"))

    response = admin_client.get(reverse("admin:async_jobs_job_change", args=[job.pk]))

    html = response.content.decode()
    assert "Lease (a running non-atomic job)" in html
    assert "web1:4242" in html
    for field in ("worker", "heartbeat", "lease_expires", "cancel_requested"):
        assert f'name="{field}"' not in html  # shown, never editable
        assert f"field-{field}" in html


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_an_atomic_job_a_worker_runs_is_shown_running(
    admin_client, on_postgres, start_manage, tmp_path
):
    """On PostgreSQL its row lock tells; the row itself stays pending."""
    if not on_postgres:
        pytest.skip("SQLite has no row locks to tell a running atomic job by")
    flag = tmp_path / "hold"
    flag.touch()
    held = schedule("shop.tasks.write_then_wait", args=["held", str(flag)])
    waiting = schedule("shop.tasks.noop", run_after=timedelta(hours=1))
    worker = start_manage("flush_queue", "--jobs", "1")
    try:
        wait_until(Path(f"{flag}.started").exists, "the job to start", process=worker)
        running = changelist(admin_client, status__exact="running")
        pending = changelist(admin_client, status__exact="pending")
        page = admin_client.get(
            reverse("admin:async_jobs_job_change", args=[held.pk])
        ).content.decode()
        everything = changelist(admin_client).content.decode()
    finally:
        flag.unlink()
    assert finish(worker)[0] == 0
    assert listed(running) == [held.pk]
    assert listed(pending) == [waiting.pk]
    assert 'Running <span class="async-jobs-note">(atomic, in a worker' in page
    assert "a worker&#x27;s transaction" in everything
    held.refresh_from_db()
    assert held.status == Job.Status.SUCCEEDED  # nothing was written meanwhile


# The Error changelist

ERRORS = "admin:async_jobs_error_changelist"


def error_list(client, **params):
    return client.get(reverse(ERRORS), params)


def listed_errors(response) -> list[int]:
    return [error.pk for error in response.context["cl"].result_list]


def errors_of(*labels_and_functions: tuple[str, str]) -> list[Error]:
    """One failed job per (function, label); their errors, oldest first."""
    for function, label in labels_and_functions:
        job = schedule(function, args=[label], meta={"max_attempts": 1})
        with pytest.raises((RuntimeError, ValueError)):
            job.execute()
    return list(Error.objects.order_by("pk"))


def test_error_changelist_lists_newest_first_with_a_link_to_the_job(admin_client):
    errors = errors_of(
        ("shop.tasks.write_then_fail", "a"), ("shop.tasks.write_then_fail", "b")
    )

    response = error_list(admin_client)

    assert response.status_code == 200
    assert listed_errors(response) == [error.pk for error in reversed(errors)]
    html = response.content.decode()
    job_url = reverse("admin:async_jobs_job_change", args=[errors[0].job_id])
    assert f'<a href="{job_url}">#{errors[0].job_id}</a>' in html
    assert "builtins.RuntimeError: failed after writing a" in html
    assert "shop.tasks.write_then_fail" in html
    assert "Add error" not in html
    assert "_facets" not in html
    assert 'name="action"' not in html  # no actions, no delete


def test_error_changelist_filters_by_class_date_and_function(admin_client):
    errors = errors_of(
        ("shop.tasks.write_then_fail", "a"),
        ("shop.tasks.send_receipt", "b"),  # ValueError: not an id
    )
    Error.objects.filter(pk=errors[0].pk).update(
        occurred=timezone.now() - timedelta(days=30)
    )
    cl = error_list(admin_client).context["cl"]
    choices = [choice["display"] for choice in cl.filter_specs[0].choices(cl)][1:]
    assert choices == ["builtins.RuntimeError", "builtins.ValueError"]

    by_class = error_list(admin_client, exception_class="builtins.ValueError")
    by_name = error_list(admin_client, name="shop.tasks.write_then_fail")
    occurred = next(spec for spec in cl.filter_specs if spec.title == "occurred")
    past_week = next(
        choice for choice in occurred.choices(cl) if choice["display"] == "Past 7 days"
    )
    by_date = admin_client.get(reverse(ERRORS) + past_week["query_string"])
    prefix_only = error_list(admin_client, exception_class="builtins.Runtime")

    assert listed_errors(by_class) == [errors[1].pk]
    assert listed_errors(by_name) == [errors[0].pk]
    assert listed_errors(by_date) == [errors[1].pk]
    assert listed_errors(prefix_only) == []


def test_error_changelist_search_by_job_id_and_text(admin_client):
    errors = errors_of(
        ("shop.tasks.write_then_fail", "apple"), ("shop.tasks.write_then_fail", "pear")
    )

    by_id = error_list(admin_client, q=str(errors[1].job_id))
    by_text = error_list(admin_client, q="APPLE")

    assert listed_errors(by_id) == [errors[1].pk]
    assert listed_errors(by_text) == [errors[0].pk]


def test_error_detail_is_read_only_and_shows_the_traceback(admin_client):
    (error,) = errors_of(("shop.tasks.write_then_fail", "a"))
    url = reverse("admin:async_jobs_error_change", args=[error.pk])

    page = admin_client.get(url)
    posted = admin_client.post(url, {"attempt": 9, "exception": "edited"})
    added = admin_client.get(reverse("admin:async_jobs_error_add"))
    deleted = admin_client.post(
        reverse("admin:async_jobs_error_delete", args=[error.pk]), {"post": "yes"}
    )

    assert page.status_code == 200
    html = page.content.decode()
    assert "Traceback (most recent call last):" in html
    assert 'name="_save"' not in html
    assert posted.status_code == 403
    assert added.status_code == 403
    assert deleted.status_code == 403
    error.refresh_from_db()
    assert (error.attempt, error.exception.startswith("builtins.")) == (1, True)


def test_who_may_view_jobs_may_view_their_errors(viewer, client, django_user_model):
    errors_of(("shop.tasks.write_then_fail", "a"))

    assert error_list(viewer).status_code == 200
    user = django_user_model.objects.create_user("nobody", password="pw", is_staff=True)
    client.force_login(user)
    assert error_list(client).status_code == 403


def test_error_changelist_counts_are_bounded_and_choices_come_from_recent_rows(
    admin_client, monkeypatch, on_postgres
):
    from async_jobs.admin import ErrorNameFilter, ExceptionClassFilter

    monkeypatch.setattr(EstimatedCountPaginator, "exact_limit", 3)
    monkeypatch.setattr(ErrorNameFilter, "rows", 3)
    monkeypatch.setattr(ExceptionClassFilter, "rows", 3)
    errors_of(
        ("shop.tasks.send_receipt", "old"),  # ValueError: not an id
        *[("shop.tasks.write_then_fail", str(n)) for n in range(4)],
    )

    with CaptureQueriesContext(connection) as queries:
        response = error_list(admin_client)

    assert response.status_code == 200
    sql = [query["sql"] for query in queries if "async_jobs_error" in query["sql"]]
    counts = [query for query in sql if "COUNT(" in query.upper()]
    assert "LIMIT 4" in counts[0]
    assert len(counts) == (1 if on_postgres else 2), counts
    distinct = [query for query in sql if "DISTINCT" in query]
    assert len(distinct) == 2 and all(">=" in query for query in distinct), distinct
    page = next(
        query
        for query in sql
        if '"async_jobs_error"."exception"' in query
        and "JOIN" in query
        and not query.startswith("EXPLAIN")
    )
    assert 'ORDER BY "async_jobs_error"."id" DESC' in page, page
    assert '"async_jobs_error"."traceback"' not in page  # not shown, not read
    assert '"async_jobs_job"."kwargs"' not in page
    cl = response.context["cl"]
    # The oldest error (a ValueError) is not among the newest three.
    classes = [choice["display"] for choice in cl.filter_specs[0].choices(cl)][1:]
    assert classes == ["builtins.RuntimeError"]
    assert cl.paginator.estimated == on_postgres
