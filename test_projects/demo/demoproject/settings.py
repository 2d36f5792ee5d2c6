"""Settings of the demo project: SQLite and mail files in ``var/``, no set-up.

``ASYNC_JOBS_DEMO_DIR`` moves ``var/`` elsewhere (the tests use a temporary
directory). ``DEMO_SMTP_SERVER=host:port`` sends mail by SMTP instead of
writing it to files; the demo points it at a closed port to show a failing
job being retried.
"""

import os
from pathlib import Path

import django

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("ASYNC_JOBS_DEMO_DIR") or BASE_DIR / "var")
VAR_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = "demo-only-not-a-secret"
DEBUG = True
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]
ROOT_URLCONF = "demoproject.urls"
USE_TZ = True
TIME_ZONE = "UTC"

INSTALLED_APPS = [
    "async_jobs",
    "feedback",
]

MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
    }
]

# A worker must not make the site's requests fail: each transaction takes
# the write lock as it begins (waiting up to "timeout" seconds), and readers
# never wait for a writer (WAL). See docs/modes.rst, "SQLite".
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": VAR_DIR / "db.sqlite3",
        "OPTIONS": {
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL;",
            "timeout": 20,
        },
    }
}

DEFAULT_FROM_EMAIL = "feedback@example.com"
DEMO_MAIL_DIR = VAR_DIR / "mail"
if os.environ.get("DEMO_SMTP_SERVER"):
    host, _, port = os.environ["DEMO_SMTP_SERVER"].rpartition(":")
    DEMO_MAILER = {
        "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "OPTIONS": {"host": host, "port": int(port), "timeout": 5},
    }
else:
    DEMO_MAILER = {
        "BACKEND": "django.core.mail.backends.filebased.EmailBackend",
        "OPTIONS": {"file_path": DEMO_MAIL_DIR},
    }
if django.VERSION >= (6, 1):
    MAILERS = {"default": DEMO_MAILER}
else:
    # Before Django 6.1: EMAIL_BACKEND, and an EMAIL_* setting per option
    # (EMAIL_HOST, EMAIL_PORT, EMAIL_TIMEOUT, EMAIL_FILE_PATH).
    EMAIL_BACKEND = DEMO_MAILER["BACKEND"]
    for option, value in DEMO_MAILER["OPTIONS"].items():
        globals()[f"EMAIL_{option.upper()}"] = value

# A failed job is retried after 2s, then 4s, ... (the default starts at 10s),
# without jitter, so the demo waits briefly and always prints the same thing.
ASYNC_JOBS = {"BACKOFF_BASE": 2, "BACKOFF_JITTER": 0}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {
        "file": {"class": "logging.FileHandler", "filename": VAR_DIR / "jobs.log"},
    },
    "loggers": {"async_jobs": {"handlers": ["file"], "level": "INFO"}},
}
