"""Signals sent around a job's life. Every one has ``sender=Job``.

* ``job_scheduled(job)``: after the transaction that scheduled the job commits;
  never for a job whose transaction rolled back.
* ``job_started(job)``: in the worker, just before the function is called,
  inside the job's transaction.
* ``job_finished(job, outcome)``: after the attempt's outcome has committed;
  ``outcome.status`` is ``"succeeded"``, ``"retry"`` or ``"failed"``.
"""

from django.dispatch import Signal

job_scheduled = Signal()
job_started = Signal()
job_finished = Signal()
