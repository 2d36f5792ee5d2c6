"""Signals sent around a job's life. Every one has ``sender=Job``.

* ``job_scheduled(job)``: after the transaction that scheduled the job commits;
  never for a job whose transaction (or savepoint) rolled back.
* ``job_started(job)``: in the worker, just before the function is called,
  inside the job's transaction: a receiver's writes commit or roll back with
  the job's, and a receiver that raises fails the attempt.
* ``job_finished(job, outcome)``: after the attempt's outcome has committed;
  ``outcome.status`` is ``"succeeded"``, ``"retry"`` or ``"failed"``, and
  ``outcome.duration`` and ``outcome.exception`` say how long and why.

``job_scheduled`` and ``job_finished`` come after a commit that nothing can
undo, so an exception in one of their receivers is logged (logger
``django.db.backends.base``) rather than raised: it can't make ``schedule()``
look failed nor stop a worker.
"""

from django.dispatch import Signal

job_scheduled = Signal()
job_started = Signal()
job_finished = Signal()
