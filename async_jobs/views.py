"""The Prometheus scrape view, for the project's URLconf (``prometheus`` extra).

Never open by default: staff users only (their admin session), or a scraper
that sends ``Authorization: Bearer <token>`` when the view is mounted with
``MetricsView.as_view(token=...)``. See docs/operations.rst.
"""

from __future__ import annotations

import hmac

from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse
from django.views import View

try:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
except ImportError as exc:  # pragma: no cover - the extra is in the test extra
    raise ImportError(
        "async_jobs.views serves Prometheus metrics, which needs prometheus_client: "
        "pip install 'django-async-jobs[prometheus]'."
    ) from exc

from async_jobs.metrics import QueueCollector, registry

#: Shared by every request of this process, so its cache is too.
_queues = QueueCollector()


class MetricsView(View):
    """Prometheus' text format: this process's counters and the queue gauges."""

    http_method_names = ["get", "head"]
    #: A bearer token a scraper may send instead of being a logged-in staff user.
    token: str | None = None

    @classmethod
    def as_view(cls, **initkwargs):
        token = initkwargs.get("token", cls.token)
        if token is not None and (not isinstance(token, str) or len(token) < 16):
            raise ImproperlyConfigured(
                "MetricsView's token must be a str of at least 16 characters, or "
                "None (staff users only)."
            )
        return super().as_view(**initkwargs)

    def get(self, request: HttpRequest) -> HttpResponse:
        if not (self._staff(request) or self._bearer(request)):
            response = HttpResponse(
                "Forbidden\n", status=403, content_type="text/plain"
            )
            if self.token is not None:
                response["WWW-Authenticate"] = "Bearer"
            return response
        response = HttpResponse(
            generate_latest(registry(_queues)), content_type=CONTENT_TYPE_LATEST
        )
        response["Cache-Control"] = "no-store"
        return response

    def _staff(self, request: HttpRequest) -> bool:
        user = getattr(request, "user", None)
        return bool(user is not None and user.is_active and user.is_staff)

    def _bearer(self, request: HttpRequest) -> bool:
        if self.token is None:
            return False
        scheme, _, sent = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            sent.strip().encode(), self.token.encode()
        )


#: Staff users only; ``include("async_jobs.urls")`` mounts it at ``metrics``.
metrics = MetricsView.as_view()
