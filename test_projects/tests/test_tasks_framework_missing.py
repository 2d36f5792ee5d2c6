"""Without Django's tasks framework async_jobs works; only its backend refuses.

Real processes in which neither ``django.tasks`` nor ``django_tasks`` can be
imported (as on Django 5.2 without the backport), whatever this venv has.
"""

import subprocess
import sys

import pytest

from async_jobs import Job, schedule

from .conftest import PROJECT_DIR, worker_env

#: Makes both imports fail in the process, as if neither were installed.
WITHOUT_FRAMEWORK = "import sys\nsys.modules['django.tasks'] = None\nsys.modules['django_tasks'] = None\n"


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_FRAMEWORK + code],
        env=worker_env(DJANGO_SETTINGS_MODULE="testproject.settings"),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_backend_says_why_it_cannot_load():
    done = run_python(
        "import django\n"
        "django.setup()\n"
        "from django.core.exceptions import ImproperlyConfigured\n"
        "try:\n"
        "    from async_jobs.backends import JobsBackend\n"
        "except ImproperlyConfigured as exc:\n"
        "    print('refused:', exc)\n"
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(
        "refused: async_jobs.backends.JobsBackend needs Django's tasks framework: "
        "django.tasks (Django 6.0 or later) or, on Django 5.2, the django-tasks "
        "backport (pip install 'django-async-jobs[tasks]' and add 'django_tasks' "
        "to INSTALLED_APPS). Neither imports here ("
    )
    assert "import of django.tasks halted" in done.stdout


@pytest.mark.django_db(transaction=True)
def test_the_rest_of_the_library_works_without_it():
    job = schedule("shop.tasks.add", args=[2, 3])

    done = run_python(
        "import runpy\n"
        "sys.argv = ['manage.py', 'flush_queue']\n"
        f"runpy.run_path({str(PROJECT_DIR / 'manage.py')!r}, run_name='__main__')\n"
    )

    assert done.returncode == 0, done.stderr
    assert "1 succeeded" in done.stdout
    job.refresh_from_db()
    assert (job.status, job.result) == (Job.Status.SUCCEEDED, 5)
