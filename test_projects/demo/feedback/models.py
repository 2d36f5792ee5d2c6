from django.db import models


class Feedback(models.Model):
    """A message a visitor sent through the feedback form."""

    name = models.CharField(max_length=100)
    email = models.EmailField()
    message = models.TextField()
    created = models.DateTimeField(auto_now_add=True)
    emailed = models.DateTimeField(
        null=True, blank=True, help_text="When its summary was emailed."
    )

    def __str__(self) -> str:
        return f"Feedback #{self.pk} from {self.name}"
