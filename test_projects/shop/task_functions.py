"""Tasks of Django's tasks framework that the JobsBackend tests enqueue.

Only importable where django.tasks (Django 6+) or the django_tasks backport is.
"""

try:
    from django.tasks import TaskContext, task
except ImportError:
    from django_tasks import TaskContext, task

from shop.models import Mark, Order, Receipt
from shop.waiting import await_file


@task(queue_name="mail", priority=10)
def email_receipt(order_id: int) -> int:
    receipt = Receipt.objects.create(order=Order.objects.get(pk=order_id))
    return receipt.pk


@task()
def noop(*args, **kwargs) -> None:
    return None


@task()
async def noop_async(*args, **kwargs) -> None:
    return None


@task
def noop_from_bare_decorator(*args, **kwargs) -> None:
    return None


@task()
def calculate_meaning_of_life() -> int:
    return 42


@task()
async def add_async(a: int, b: int) -> int:
    return a + b


@task()
def record(label: str) -> str:
    Mark.objects.create(label=label)
    return label


@task()
def write_then_fail(label: str) -> None:
    Mark.objects.create(label=label)
    raise ValueError(f"failed after writing {label}")


@task()
def failing_value_error() -> None:
    raise ValueError("This task failed due to ValueError")


@task()
def failing_system_exit() -> None:
    raise SystemExit("This task failed due to SystemExit")


@task()
def failing_keyboard_interrupt() -> None:
    raise KeyboardInterrupt("This task failed due to KeyboardInterrupt")


@task()
def complex_exception() -> None:
    raise ValueError(ValueError("This task failed"))


@task()
def complex_return_value():
    return Mark  # a class: not JSON


@task()
def returns_tuple() -> tuple:
    return (1, "two")


@task(takes_context=True)
def get_task_id(context) -> str:
    return context.task_result.id


@task(takes_context=True)
def check_context(context, attempt: int) -> None:
    assert isinstance(context, TaskContext)
    assert context.attempt == attempt


@task(takes_context=True)
def fail_before_attempt(context, succeed_on: int) -> dict:
    """Fails until its ``succeed_on``-th attempt; says what its context held."""
    Mark.objects.create(label=f"attempt {context.attempt}")
    if context.attempt < succeed_on:
        raise RuntimeError(f"attempt {context.attempt} fails")
    result = context.task_result
    return {
        "attempt": context.attempt,
        "status": result.status,
        "errors": [error.exception_class_path for error in result.errors],
        "worker_ids": result.worker_ids,
        "started_at": result.started_at.isoformat(),
        "last_attempted_at": result.last_attempted_at.isoformat(),
    }


@task(takes_context=True)
def status_seen_from_inside(context) -> str:
    """What ``get_result`` says about this task while it runs."""
    return str(context.task_result.task.get_result(context.task_result.id).status)


@task()
def wait_for_file(path: str, timeout: float) -> str:
    """Runs until ``path`` exists (the test's go-ahead), at most ``timeout``."""
    await_file(path, timeout)
    return path


@task(queue_name="mail", priority=7)
def send_mail(to: str) -> str:
    return to
