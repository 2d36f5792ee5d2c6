"""The test project's settings, with the connection settings for workers.

docs/guarantees.rst shows the block between the markers; the tests check that
PostgreSQL accepts and applies it (test_dead_workers.py).
"""

from testproject.settings import *  # noqa: F403
from testproject.settings import DATABASES

# [keepalives]
DATABASES["default"]["OPTIONS"] = {
    # The worker's side (libpq): give up on a server or network that went
    # silent after about 25 s (10 + 3 x 5), instead of the system's 2 hours.
    "keepalives": 1,
    "keepalives_idle": 10,  # seconds of silence before the first probe
    "keepalives_interval": 5,  # seconds between probes
    "keepalives_count": 3,  # unanswered probes before the connection is dead
    "tcp_user_timeout": 25000,  # ms sent data may stay unacknowledged
    # The server's side, for this connection only: the server probes the
    # worker's machine the same way and, once it is gone, ends the session,
    # rolling back its transaction and releasing the job's row lock.
    # client_connection_check_interval (PostgreSQL 14+) also notices a gone
    # client while a query of its job is still running.
    "options": (
        "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5"
        " -c tcp_keepalives_count=3 -c tcp_user_timeout=25000"
        " -c client_connection_check_interval=5000"
    ),
}
# [keepalives end]
