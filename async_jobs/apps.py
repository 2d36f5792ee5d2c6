from django.apps import AppConfig


class AsyncJobsConfig(AppConfig):
    name = "async_jobs"
    verbose_name = "Async jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from async_jobs import checks  # noqa: F401  (registers the checks)
