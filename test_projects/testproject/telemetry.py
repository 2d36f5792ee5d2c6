"""OpenTelemetry's set-up, once per process, as docs/observability.rst shows it.

The tests call it with the SDK's in-memory exporter; a project passes an OTLP
exporter (``opentelemetry-exporter-otlp``) and calls it from its settings,
``wsgi.py`` or ``manage.py``, so that web and worker processes both trace.
"""

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter


def configure_tracing(
    exporter: SpanExporter,
    service: str = "shop",
    processor: type[SpanProcessor] = BatchSpanProcessor,
) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(processor(exporter))
    trace.set_tracer_provider(provider)
