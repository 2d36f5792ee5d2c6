"""The test project's settings without DEBUG, whose query log would slow every query."""

from testproject.settings import *  # noqa: F403

DEBUG = False
