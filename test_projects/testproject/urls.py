from django.contrib import admin
from django.urls import include, path

from async_jobs.backends import framework as tasks_framework

urlpatterns = [
    path("admin/", admin.site.urls),
    path("feedback/", include("feedback.urls")),
]

if tasks_framework.AVAILABLE:
    from shop.views import checkout

    urlpatterns.append(path("shop/checkout/", checkout, name="checkout"))
