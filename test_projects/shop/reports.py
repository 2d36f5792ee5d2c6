"""A long job written to run more than once: the worked example of docs/modes.rst.

Run non-atomic, a job's writes commit as it makes them and a worker that dies
leaves them in place; the job then runs again from the start. So the job is
idempotent: it reads its input in batches (no transaction held open for
long), and writes its result once, keyed by what it reports on, with
``update_or_create``: a second run writes the same row again, never a second
one.
"""

from async_jobs import schedule
from shop.models import Order, Report

#: Orders read per query: each batch is a short read, not one long snapshot.
BATCH = 500


def sales_report(key: str) -> dict:
    """Sum every order, in batches; store the figures under ``key``."""
    orders = total = 0
    last = 0
    while True:
        batch = list(
            Order.objects.filter(pk__gt=last)
            .order_by("pk")
            .values_list("pk", "total")[:BATCH]
        )
        if not batch:
            break
        orders += len(batch)
        total += sum(amount for _, amount in batch)
        last = batch[-1][0]
    # The result, keyed by the report: a second run replaces it.
    Report.objects.update_or_create(
        key=key, defaults={"orders": orders, "total": total}
    )
    return {"orders": orders, "total": total}


def schedule_sales_report(key: str):
    """Schedule the report to run non-atomic: it holds no lock while it runs."""
    return schedule(sales_report, args=[key], meta={"atomic": False})
