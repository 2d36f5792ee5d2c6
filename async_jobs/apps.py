from django.apps import AppConfig


class AsyncJobsConfig(AppConfig):
    name = "async_jobs"
    verbose_name = "Async jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # checks registers our checks. Importing Django's tasks framework, if
        # it is there, registers those of the TASKS backends (JobsBackend's
        # too), which otherwise only run once something imported it.
        from async_jobs import checks, tasks_framework  # noqa: F401
