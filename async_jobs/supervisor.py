"""Running workers in child processes, so that no job can take the queue down.

``flush_queue`` from the command line forks its worker into a child process
(``--processes N``: N of them) and watches it. The child tells its parent,
through a pipe, of each attempt just before it starts and of each batch once
it has committed. A child that dies in between (SIGKILL, the OOM killer, a
segfault, a job calling ``os._exit()``) is charged the attempt it was running:
the database has rolled its transaction back, and the parent writes an
``Error`` saying the worker died (signal or exit code, host:pid, attempt k of
n), then a retry or ``failed``. So a job that kills every worker that runs it
ends ``failed`` at ``max_attempts`` while the jobs behind it run. Then the
parent starts a new child: in a cron run, to run what is left; with
``--loop``, to keep N at work, pausing longer each time a child dies young.

The parent holds no database connection while its children run; it opens one
only to charge an attempt. A stop signal it receives is passed on to every
child, which finishes its running job (a second signal aborts it). Children
are in their own process group, so a terminal's Ctrl-C reaches them once,
through the parent. POSIX only: where ``os.fork`` is missing, the worker runs
in the command's own process, as with ``call_command()``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import select
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any

from django.db import connections
from django.utils import timezone

from async_jobs.execution import LostAttempt, Outcome, charge
from async_jobs.models import Job

logger = logging.getLogger("async_jobs")

#: A child that dies within this many seconds of its start died young: the
#: next one waits longer (doubling from ``FIRST_PAUSE`` to ``MAX_PAUSE``).
YOUNG = 10.0
#: prctl() option: the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1
FIRST_PAUSE = 0.5
MAX_PAUSE = 30.0
#: After reading its children's reports, the parent waits this long (seconds)
#: before it reads again. A busy child reports twice per job: waking for each
#: line took CPU the workers and the database need (on a 2-core machine, a
#: sixth more CPU per job and a drain 8-17% slower: benchmarks.rst). A dead
#: child is charged this much later at most.
READ_PAUSE = 0.02


class ChildReport:
    """The child's end of the pipe: what it tells its parent, one JSON line each."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def send(self, **message: Any) -> None:
        self.stream.write(json.dumps(message) + "\n")
        self.stream.flush()

    def attempt(self, job: Job) -> None:
        self.send(
            job=job.pk,
            attempt=job.attempts,
            of=job.max_attempts,
            worker=job.attempt_log[-1]["worker"],
            started=(job.started or timezone.now()).isoformat(),
        )

    def outcome(self, outcome: Outcome) -> None:
        self.send(outcome=outcome.status)


@dataclass
class Child:
    """One child process, and what the parent knows of it."""

    pid: int
    #: The parent's end of the pipe the child writes its JSON lines to.
    stream: socket.socket
    born: float = field(default_factory=time.monotonic)
    #: The attempts started since its last committed batch: the last is running.
    in_flight: list[dict] = field(default_factory=list)
    buffer: bytes = b""
    #: Set by the child's last message: its exit code and why (a fatal error).
    fatal: str | None = None
    done: bool = False
    #: How it ended, and whether the parent charged the attempt it died in.
    how: str = ""
    charged: bool = False


def _die_with_parent(parent: int) -> None:
    """Make the kernel kill this child if its parent dies (Linux).

    ``kill -9`` of ``flush_queue`` must stop its job too, as it did when the
    job ran in that very process: its transaction rolls back.
    """
    with suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before prctl() took effect
        os._exit(1)


def describe(status: int) -> str:
    """How a child ended, from its ``waitpid()`` status."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {number} ({name})"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"


@dataclass
class Supervisor:
    """Starts children that run ``run_child(report)``, and charges their deaths.

    ``run_child`` runs a worker in the child and returns the child's exit
    code; it returns, rather than raises, a fatal error, after sending it as
    ``report.send(fatal=...)``. ``loop``: keep ``processes`` children running
    until a stop; else start new ones only to finish a run a death cut short.
    """

    run_child: Callable[[ChildReport], int]
    using: str
    processes: int = 1
    loop: bool = False
    on_outcome: Callable[[Outcome], None] | None = None
    counts: Counter = field(default_factory=Counter)
    children: dict[int, Child] = field(default_factory=dict)
    stop_signals: int = 0
    fatal: str | None = None
    deaths: int = 0

    def run(self) -> Counter:
        previous = {
            sig: signal.signal(sig, self._on_signal)
            for sig in (signal.SIGTERM, signal.SIGINT)
        }
        pause = FIRST_PAUSE
        try:
            for _ in range(self.processes):
                self._start()
            while self.children:
                self._read()
                for child in self._reap():
                    young = time.monotonic() - child.born < YOUNG
                    if child.fatal is not None:
                        self.fatal = self.fatal or child.fatal
                    if self.stop_signals or self.fatal is not None or child.done:
                        continue
                    if not self.loop:
                        if child.charged:
                            self._start()  # to run what is left
                        else:
                            self.fatal = (
                                f"The worker process {child.how}, running no job."
                            )
                        continue
                    if young:
                        self._sleep(pause)
                        pause = min(MAX_PAUSE, pause * 2)
                    else:
                        pause = FIRST_PAUSE
                    if not self.stop_signals:
                        self._start()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.counts

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stop_signals += 1
        for pid in self.children:
            with suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _start(self) -> None:
        # The child must not share the parent's connections (nor the parent
        # keep one open while it waits).
        connections.close_all()
        read_end, write_end = socket.socketpair()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # else the child would write the parent's buffer again
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                read_end.close()
                _die_with_parent(parent)
                os.setpgid(0, 0)
                for child in self.children.values():
                    child.stream.close()
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)
                with write_end.makefile("w", encoding="utf-8") as stream:
                    code = self.run_child(ChildReport(stream))
            finally:
                for stream in (sys.stdout, sys.stderr):
                    with suppress(Exception):
                        stream.flush()
                os._exit(code)
        write_end.close()
        self.children[pid] = Child(pid, read_end)

    def _read(self) -> None:
        """Wait for what the children say, or for one to end."""
        streams = {child.stream.fileno(): child for child in self.children.values()}
        try:
            readable, _, _ = select.select(list(streams), [], [], 0.5)
        except InterruptedError:
            return
        for fileno in readable:
            child = streams[fileno]
            self._receive(child)
        if readable:
            time.sleep(READ_PAUSE)  # let the next reports gather

    def _heard(self, child: Child, message: dict) -> None:
        if "job" in message:
            child.in_flight.append(message)
        elif "outcome" in message:
            self.counts[message["outcome"]] += 1
            child.in_flight.clear()  # its batch has committed
        elif "fatal" in message:
            child.fatal = message["fatal"]
        elif "done" in message:
            child.done = True
            child.in_flight.clear()

    def _reap(self) -> list[Child]:
        """The children that have ended, each charged for the job it died in."""
        ended = []
        for pid in list(self.children):
            try:
                waited, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                waited, status = pid, 0
            if waited == 0:
                continue
            child = self.children.pop(pid)
            self._drain(child)
            child.stream.close()
            child.how = describe(status)
            if child.in_flight and child.fatal is None and not child.done:
                self._charge(child, child.how)
                child.charged = True
            ended.append(child)
        return ended

    def _drain(self, child: Child) -> None:
        """What the child wrote before it ended."""
        while select.select([child.stream], [], [], 0)[0] and self._receive(child):
            pass

    def _receive(self, child: Child) -> bool:
        """Read what the child sent; False at the end of its pipe."""
        chunk = child.stream.recv(65536)
        child.buffer += chunk
        *lines, child.buffer = child.buffer.split(b"\n")
        for line in lines:
            self._heard(child, json.loads(line))
        return bool(chunk)

    def _charge(self, child: Child, how: str) -> None:
        """The child died running its last attempt: record that attempt."""
        self.deaths += 1
        running = child.in_flight[-1]
        reason = (
            f"the worker {running['worker']} {how} while running attempt "
            f"{running['attempt']} of {running['of']}"
        )
        lost = LostAttempt(
            job_id=running["job"],
            attempt=running["attempt"],
            worker=running["worker"],
            started=datetime.fromisoformat(running["started"]),
            reason=reason,
        )
        logger.error("Job %s: %s.", lost.job_id, reason)
        try:
            outcome = charge(lost, self.using)
        finally:
            connections.close_all()
        if outcome is not None:
            self.counts[outcome.status] += 1
            if self.on_outcome is not None:
                self.on_outcome(outcome)

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop_signals and time.monotonic() < deadline:
            time.sleep(min(0.1, deadline - time.monotonic()))
