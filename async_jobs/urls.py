"""``path("jobs/", include("async_jobs.urls"))``: the metrics view, staff only.

For a token-protected one, mount ``async_jobs.views.MetricsView.as_view(token=...)``
yourself. Needs the ``prometheus`` extra.
"""

from django.urls import path

from async_jobs.views import metrics

app_name = "async_jobs"
urlpatterns = [path("metrics", metrics, name="metrics")]
