"""Request telemetry: the record every request leaves, and the sinks that take it."""

from hoodrun.telemetry.sink import FanoutSink, RequestRecord, TelemetrySink

__all__ = ["FanoutSink", "RequestRecord", "TelemetrySink"]
