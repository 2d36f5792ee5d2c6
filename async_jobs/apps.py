from contextlib import suppress
from importlib.util import find_spec

from django.apps import AppConfig
from django.core.exceptions import ImproperlyConfigured
from django.db.models.signals import post_migrate


class AsyncJobsConfig(AppConfig):
    name = "async_jobs"
    verbose_name = "Async jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Plug the upper layers into the core (``hooks.py``); register checks."""
        from async_jobs import checks, hooks  # noqa: F401 (checks registers them)
        from async_jobs.claiming import create_claim_function
        from async_jobs.execution import execute_now
        from async_jobs.groups import close_finished_groups, close_stranded_groups
        from async_jobs.recurrence import schedule_next_occurrences

        # A series goes on before its group is looked at: the order of old.
        hooks.on_settled(
            schedule_next_occurrences,
            lambda job: isinstance(job.meta, dict) and "repeat" in job.meta,
        )
        hooks.on_settled(close_finished_groups, lambda job: job.group_id is not None)
        hooks.on_sweep(close_stranded_groups)
        hooks.set_executor(execute_now)
        # Django's tasks framework, where installed: jobs may name its Tasks,
        # and the checks of the TASKS backends (JobsBackend's too) run.
        with suppress(ImproperlyConfigured):
            from async_jobs import backends  # noqa: F401
        # Prometheus and OpenTelemetry, where their extras are installed.
        _plug_in_integrations()
        post_migrate.connect(create_claim_function, sender=self)


def _plug_in_integrations() -> None:
    """Each optional integration connects itself to the job signals on import;
    without its extra, nothing of it is imported."""
    if find_spec("prometheus_client") is not None:
        from async_jobs import metrics  # noqa: F401
    # opentelemetry is a namespace package: ask for the API's own module.
    if find_spec("opentelemetry") is not None and find_spec("opentelemetry.trace"):
        from async_jobs import tracing  # noqa: F401
