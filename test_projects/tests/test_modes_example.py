"""The worked example of docs/modes.rst: a long job that may run twice."""

import pytest
from shop import reports
from shop.models import Order, Report

from async_jobs import Job, schedule

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_second_run_rewrites_the_same_result(monkeypatch):
    monkeypatch.setattr(reports, "BATCH", 2)  # several batches
    Order.objects.bulk_create(Order(total=n) for n in range(1, 6))
    job = schedule(reports.sales_report, args=["2030-01"])

    assert job.execute() == {"orders": 5, "total": 15}
    # As if its worker had died after writing, and another ran it again.
    assert reports.sales_report("2030-01") == {"orders": 5, "total": 15}

    report = Report.objects.get()
    assert (report.key, report.orders, report.total) == ("2030-01", 5, 15)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED


def test_a_run_after_new_orders_updates_the_one_row():
    Order.objects.create(total=10)
    reports.sales_report("daily")
    Order.objects.create(total=5)

    assert reports.sales_report("daily") == {"orders": 2, "total": 15}
    assert list(Report.objects.values_list("key", "orders", "total")) == [
        ("daily", 2, 15)
    ]
