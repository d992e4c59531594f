"""OpenTelemetry set-up: traces (OTLP when configured), metrics (Prometheus text).

OpenTelemetry's providers are process-wide by design; :func:`setup_telemetry` is
called once per process by the server bootstrap (tests may pass an in-memory
span exporter). Code creates instruments with :func:`meter` and spans with
:func:`tracer`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)

from llmesh.kernel.logging import get_logger

log = get_logger(__name__)


@dataclass
class Telemetry:
    """Handles to what :func:`setup_telemetry` installed."""

    tracer_provider: TracerProvider
    metrics_port: int | None

    def shutdown(self) -> None:
        self.tracer_provider.force_flush(timeout_millis=2000)


def _tracer_provider(service: str) -> TracerProvider:
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    trace.set_tracer_provider(provider)
    return provider


def setup_telemetry(
    service: str,
    *,
    otlp_endpoint: str | None = None,
    metrics_port: int | None = None,
    span_exporter: SpanExporter | None = None,
    metrics_host: str = "127.0.0.1",
    metrics_token_file: Path | None = None,
) -> Telemetry:
    """Install tracer and meter providers for ``service`` (first call wins).

    ``metrics_port`` starts a Prometheus text endpoint (``/metrics``); 0 picks a
    free port. Scrapers must send the bearer token in ``metrics_token_file``, or be on
    loopback when there is none (:mod:`llmesh.kernel.metrics_http`). ``span_exporter``
    (tests) receives every finished span at once.
    """
    provider = _tracer_provider(service)
    if span_exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint, insecure=True))
        )
    bound_port: int | None = None
    if metrics_port is not None:
        bound_port = _start_prometheus(service, metrics_port, metrics_host, metrics_token_file)
    return Telemetry(tracer_provider=provider, metrics_port=bound_port)


def _start_prometheus(service: str, port: int, host: str, token_file: Path | None) -> int:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader

    from llmesh.kernel.metrics_http import MetricsAccess, start_metrics_server

    server = start_metrics_server(host=host, port=port, access=MetricsAccess(token_file))
    bound = server.port
    readers: list[MetricReader] = [PrometheusMetricReader()]
    metrics.set_meter_provider(
        MeterProvider(metric_readers=readers, resource=Resource.create({"service.name": service}))
    )
    log.info(
        "metrics on http://%s:%d/metrics (%s)",
        host,
        bound,
        "bearer token" if token_file else "loopback callers only",
    )
    return bound


def tracer(name: str) -> trace.Tracer:
    """A tracer for spans of inner steps (queue wait, prefill, SQL ...)."""
    return trace.get_tracer(name)


def meter(name: str) -> metrics.Meter:
    """A meter for domain metrics (counters, histograms, gauges)."""
    return metrics.get_meter(name)


def observe_event_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Export ``process.asyncio.tasks`` (Prometheus ``process_asyncio_tasks``): the tasks
    alive on ``loop``, the service's event loop. Under steady load it stays flat; a count
    that only grows is a leak (``make soak`` checks it, with RSS and open files)."""

    def observe(_options: CallbackOptions) -> list[Observation]:
        if loop.is_closed():
            return []
        return [Observation(len(asyncio.all_tasks(loop)))]  # safe from the scrape thread

    meter("llmesh.kernel").create_observable_gauge(
        "process.asyncio.tasks",
        callbacks=[observe],
        description="Asyncio tasks alive on the service's event loop",
    )
