from importlib.util import find_spec

from django.contrib import admin
from django.urls import include, path

from async_jobs.backends import framework as tasks_framework

#: The bearer token of the token-protected metrics view (tests only).
METRICS_TOKEN = "test-metrics-token-0123456789"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("feedback/", include("feedback.urls")),
]

if find_spec("prometheus_client"):
    from async_jobs.views import MetricsView

    urlpatterns += [
        path("jobs/", include("async_jobs.urls")),  # staff only
        path("scrape/metrics", MetricsView.as_view(token=METRICS_TOKEN)),
    ]

if tasks_framework.AVAILABLE:
    from shop.views import checkout

    urlpatterns.append(path("shop/checkout/", checkout, name="checkout"))
