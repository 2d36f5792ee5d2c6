"""The benchmark's jobs for the peers: the same no-op and one-row insert as
``shop.tasks.noop`` and ``shop.tasks.record``, written as each peer's users
write them (a procrastinate task; a Django task for django-tasks-db)."""
