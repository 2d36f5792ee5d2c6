from django.apps import AppConfig
from django.db.models.signals import post_migrate


class AsyncJobsConfig(AppConfig):
    name = "async_jobs"
    verbose_name = "Async jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # checks registers our checks. Importing Django's tasks framework, if
        # it is there, registers those of the TASKS backends (JobsBackend's
        # too), which otherwise only run once something imported it.
        from async_jobs import checks, tasks_framework  # noqa: F401
        from async_jobs.claiming import create_claim_function

        post_migrate.connect(create_claim_function, sender=self)
        from async_jobs.integrations import plug_in

        plug_in()
