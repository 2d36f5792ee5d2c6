"""Django tasks, enqueued on django-tasks-db's database backend."""

try:
    from django.tasks import task
except ImportError:  # Django 5.2: the django-tasks backport
    from django_tasks import task

from shop.models import Mark

from peerjobs import stamps


@task(backend="db")
def noop() -> None:
    return None


@task(backend="db")
def record(label: str) -> str:
    Mark.objects.create(label=label)
    return label


@task(backend="db")
def noop_stamped(label: str) -> None:
    stamps.noop(label)


@task(backend="db")
def record_stamped(label: str) -> str:
    return stamps.record(label)
