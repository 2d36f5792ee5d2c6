"""A view that enqueues a task of Django's tasks framework (docs/django-tasks.rst)."""

from django.db import transaction
from django.http import JsonResponse
from django.views.decorators.http import require_POST

from shop.models import Order
from shop.task_functions import email_receipt


@require_POST
@transaction.atomic
def checkout(request):
    order = Order.objects.create(total=int(request.POST["total"]))
    # Written in this transaction: rolled back with the order, or committed
    # with it. No transaction.on_commit() needed.
    result = email_receipt.enqueue(order.pk)
    return JsonResponse({"order": order.pk, "task": result.id})
