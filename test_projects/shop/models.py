from django.db import models


class Order(models.Model):
    total = models.IntegerField(default=0)

    def __str__(self) -> str:
        return f"Order {self.pk}"


class Receipt(models.Model):
    """Written by jobs; the unique order makes a second run of a job fail loudly."""

    order = models.OneToOneField(Order, on_delete=models.CASCADE)
    sent = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"Receipt for order {self.order_id}"


class Mark(models.Model):
    """A row a job writes, so a test can see whether its writes committed."""

    label = models.CharField(max_length=100, unique=True)

    def __str__(self) -> str:
        return self.label


class Report(models.Model):
    """A report's figures, written once per key by a job that may run twice."""

    key = models.CharField(max_length=100, unique=True)
    orders = models.IntegerField(default=0)
    total = models.IntegerField(default=0)
    written = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"Report {self.key}"
