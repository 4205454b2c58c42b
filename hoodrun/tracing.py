"""OpenTelemetry tracing, off by default: ``open_tracer(config)`` returns ``None`` unless
``tracing.enabled``, and the gateway then does no tracing work at all on its hot path."""

from __future__ import annotations

from typing import Any

from hoodrun.config import Config

__all__ = ["open_tracer"]


def open_tracer(config: Config, exporter: Any = None) -> tuple[Any, Any] | None:
    """(tracer, provider) or None; ``exporter`` replaces the OTLP one (tests use an in-memory
    exporter, exported synchronously). Call ``provider.shutdown()`` at the end to flush."""
    settings = config.tracing
    if not settings.enabled:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.service_name}),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(settings.otlp_endpoint)))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("hoodrun.gateway"), provider
