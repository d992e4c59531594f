"""OpenTelemetry instruments of the inference worker (exported as Prometheus text).

Recorded from the MLX thread; the OpenTelemetry API is thread-safe.
"""

from __future__ import annotations

from llmesh.kernel.telemetry import meter

_LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class InferenceMetrics:
    """Time to first token, inter-token latency, tokens, batch size, queue depth."""

    def __init__(self) -> None:
        m = meter("llmesh.inference")
        self._ttft = m.create_histogram(
            "llmesh_inference_time_to_first_token_seconds",
            unit="s",
            description="Admission to first generated token",
            explicit_bucket_boundaries_advisory=_LATENCY_BUCKETS,
        )
        self._itl = m.create_histogram(
            "llmesh_inference_inter_token_latency_seconds",
            unit="s",
            description="Time between two tokens of one request",
            explicit_bucket_boundaries_advisory=_LATENCY_BUCKETS,
        )
        self._queue_wait = m.create_histogram(
            "llmesh_inference_queue_wait_seconds",
            unit="s",
            description="Admission to joining the batch",
            explicit_bucket_boundaries_advisory=_LATENCY_BUCKETS,
        )
        self._step = m.create_histogram(
            "llmesh_inference_step_seconds",
            unit="s",
            description="Duration of one scheduler step (decode plus prefill chunk)",
            explicit_bucket_boundaries_advisory=_LATENCY_BUCKETS,
        )
        self._tokens = m.create_counter(
            "llmesh_inference_tokens_generated", unit="1", description="Tokens generated"
        )
        self._batch = m.create_histogram(
            "llmesh_inference_batch_size",
            unit="1",
            description="Requests decoded in one step",
            explicit_bucket_boundaries_advisory=(1, 2, 4, 8, 16, 32, 64, 128),
        )
        self._queue = m.create_gauge(
            "llmesh_inference_queue_depth", unit="1", description="Requests waiting for a slot"
        )
        self._finished = m.create_counter(
            "llmesh_inference_requests_finished",
            unit="1",
            description="Generations finished, by reason",
        )

    def first_token(self, seconds: float) -> None:
        self._ttft.record(seconds)

    def inter_token(self, seconds: float) -> None:
        self._itl.record(seconds)

    def queue_wait(self, seconds: float) -> None:
        self._queue_wait.record(seconds)

    def step(self, batch: int, seconds: float) -> None:
        self._tokens.add(batch)
        self._batch.record(batch)
        self._step.record(seconds)

    def queue_depth(self, depth: int) -> None:
        self._queue.set(depth)

    def finished(self, reason: str) -> None:
        self._finished.add(1, {"reason": reason})
