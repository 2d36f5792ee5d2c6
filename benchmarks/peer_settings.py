"""benchmark_settings, plus the peers that are installed in this environment.

procrastinate through its Django app (PostgreSQL only), django-tasks-db as the
``db`` backend of Django's tasks; ``peerjobs`` holds their jobs. With
neither installed, this is benchmark_settings as it is.
"""

from importlib.util import find_spec

from benchmark_settings import *  # noqa: F403
from benchmark_settings import DATABASES, INSTALLED_APPS, TASKS

# Persistent connections, as production sites configure them. The peers'
# workers close old connections around each job (as Django does around each
# request): with Django's default of 0 they reconnect for every job, which
# would measure the connection set-up, not the peers. async_jobs' worker keeps
# its connection either way.
for database in DATABASES.values():
    database["CONN_MAX_AGE"] = None

PEERS = []
if find_spec("procrastinate") and DATABASES["default"]["ENGINE"].endswith("postgresql"):
    PEERS.append("procrastinate")
    INSTALLED_APPS = [*INSTALLED_APPS, "procrastinate.contrib.django"]
if find_spec("django_tasks_db"):
    PEERS.append("django-tasks-db")
    INSTALLED_APPS = [*INSTALLED_APPS, "django_tasks_db"]
    # The test project's own backend stays the default; its tasks name queues
    # that this backend does not know.
    TASKS = {**TASKS, "db": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
if PEERS:
    INSTALLED_APPS = [*INSTALLED_APPS, "peerjobs"]
