"""Settings of the project the tests run in.

The database is SQLite unless ``ASYNC_JOBS_DATABASE_URL`` names a PostgreSQL
server (``runtests.py --postgres`` sets it). ``ASYNC_JOBS_DB_NAME`` points a
process at an existing database, such as the test database of the pytest run
that started it.
"""

import os
import sys
import tempfile
from importlib.util import find_spec
from pathlib import Path
from urllib.parse import unquote, urlsplit

import django

BASE_DIR = Path(__file__).resolve().parent.parent
# The tutorial's app lives in the demo project; the tests run it too.
if str(BASE_DIR / "demo") not in sys.path:
    sys.path.append(str(BASE_DIR / "demo"))
SECRET_KEY = "async-jobs-tests-only"
DEBUG = True
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "testproject.urls"
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "async_jobs",
    "shop",
    "feedback",  # the tutorial's app, from test_projects/demo/
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]


def database_from_url(url: str) -> dict:
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"ASYNC_JOBS_DATABASE_URL must be postgres://…, not {url}")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")) or "postgres",
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
    }


if os.environ.get("ASYNC_JOBS_DATABASE_URL"):
    default = database_from_url(os.environ["ASYNC_JOBS_DATABASE_URL"])
else:
    sqlite_dir = Path(tempfile.gettempdir()) / f"async_jobs_tests_{os.getuid()}"
    sqlite_dir.mkdir(exist_ok=True)
    default = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(sqlite_dir / "db.sqlite3"),
        # A file, not memory, so the worker processes a test starts see it.
        "TEST": {"NAME": str(sqlite_dir / f"test_{os.getpid()}.sqlite3")},
    }
# A second database, for jobs kept apart from the application's data.
other = {**default, "NAME": f"{default['NAME']}_other"}
if default["ENGINE"].endswith("sqlite3"):
    other["TEST"] = {
        "NAME": default["TEST"]["NAME"].replace(".sqlite3", "_other.sqlite3")
    }
if os.environ.get("ASYNC_JOBS_DB_NAME"):
    default["NAME"] = os.environ["ASYNC_JOBS_DB_NAME"]
# Workers keep their connection, as a production worker should (CONN_MAX_AGE);
# ASYNC_JOBS_CONN_MAX_AGE=0 makes a process close it as Django's default does.
for database in (default, other):
    database["CONN_MAX_AGE"] = (
        float(os.environ["ASYNC_JOBS_CONN_MAX_AGE"])
        if os.environ.get("ASYNC_JOBS_CONN_MAX_AGE")
        else None
    )
DATABASES = {"default": default, "other": other}

ASYNC_JOBS = {"BACKOFF_JITTER": 0.25}

# The tests' SQLite keeps Django's defaults (deferred transactions, the
# rollback journal), which async_jobs.W002 warns about: the tests show what
# happens with them, and test_sqlite_check.py what the warning says.
SILENCED_SYSTEM_CHECKS = ["async_jobs.W002"]

if django.VERSION >= (6, 1):
    # Mail stays in memory, as the test runner makes Django's default do.
    MAILERS = {"default": {"BACKEND": "django.core.mail.backends.locmem.EmailBackend"}}

# Django's tasks framework: django.tasks (Django 6+) or, on 5.2, the backport.
if find_spec("django.tasks") or find_spec("django_tasks"):
    if not find_spec("django.tasks"):
        INSTALLED_APPS.append("django_tasks")
    TASKS = {
        "default": {
            "BACKEND": "async_jobs.backends.JobsBackend",
            "QUEUES": ["default", "mail"],
        }
    }

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"async_jobs": {"handlers": ["console"], "level": "WARNING"}},
}
