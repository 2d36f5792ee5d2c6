"""The feedback app's jobs: plain functions, run by ``flush_queue``."""

from django.core.mail import send_mail
from django.template.loader import render_to_string
from django.utils import timezone

from feedback.models import Feedback


def email_summary(feedback_id: int) -> str:
    """Email the visitor a summary of what they sent.

    Database writes first, the email last: if sending fails, the write is
    rolled back with the job and the job is tried again later.
    """
    feedback = Feedback.objects.get(pk=feedback_id)
    feedback.emailed = timezone.now()
    feedback.save(update_fields=["emailed"])
    body = render_to_string("feedback/summary.txt", {"feedback": feedback})
    send_mail(
        subject="We got your feedback",
        message=body,
        from_email=None,  # settings.DEFAULT_FROM_EMAIL
        recipient_list=[feedback.email],
    )
    return f"emailed {feedback.email}"
