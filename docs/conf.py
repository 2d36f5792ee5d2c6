"""Sphinx configuration of the django-async-jobs documentation.

Build: ``pip install -e .[docs]``, then
``sphinx-build -W -b html docs docs/_build/html``.
"""

import importlib.metadata
import sys
from pathlib import Path

import django
from django.conf import settings

DOCS = Path(__file__).resolve().parent
sys.path[:0] = [str(DOCS / "_ext"), str(DOCS.parent)]

# autodoc imports the models and the commands: they need a configured Django.
settings.configure(
    INSTALLED_APPS=["async_jobs"],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    USE_TZ=True,
)
django.setup()

project = "django-async-jobs"
author = "The django-async-jobs authors"
copyright = "the django-async-jobs authors"
release = importlib.metadata.version("django-async-jobs")
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "myst_parser",  # for CHANGELOG.md, included by changelog.rst
    "djangocommands",
]
exclude_patterns = ["_build"]
source_suffix = {".rst": "restructuredtext"}
default_role = "code"

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "separated"  # a model's (*args, **kwargs) says nothing
autodoc_preserve_defaults = True

html_theme = "furo"
html_title = f"django-async-jobs {release}"
