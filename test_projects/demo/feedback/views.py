from django.db import transaction
from django.shortcuts import redirect, render

from async_jobs import schedule
from feedback import tasks
from feedback.forms import FeedbackForm


def feedback_form(request):
    if request.method == "POST":
        form = FeedbackForm(request.POST)
        if form.is_valid():
            with transaction.atomic():
                feedback = form.save()
                schedule(tasks.email_summary, args=[feedback.pk])
            return redirect("feedback:thanks")
    else:
        form = FeedbackForm()
    return render(request, "feedback/form.html", {"form": form})


def thanks(request):
    return render(request, "feedback/thanks.html")
