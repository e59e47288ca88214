"""Per-model client statistics, and Triton's server-side breakdown."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from offload import metrics


@dataclass(frozen=True)
class ClientStats:
    calls: int  # infer()/submit() calls
    requests: int  # gRPC requests sent (calls split into pieces count several)
    inferences: int  # rows (batch entries) inferred
    failures: int  # calls that raised
    retries: int
    bytes_sent: int
    bytes_received: int
    latency_p50_ms: float | None  # per request, over the last 10,000
    latency_p99_ms: float | None


class StatsRecorder:
    """Counts for one model; mirrored to Prometheus when offload.metrics is enabled."""

    def __init__(self, model: str = "") -> None:
        self.model = model
        self._lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=10_000)
        self.calls = self.requests = self.inferences = self.failures = self.retries = 0
        self.bytes_sent = self.bytes_received = 0

    def call(self) -> None:
        with self._lock:
            self.calls += 1

    def request(self, seconds: float, rows: int, sent: int, received: int) -> None:
        with self._lock:
            self.requests += 1
            self.inferences += rows
            self.bytes_sent += sent
            self.bytes_received += received
            self._latencies.append(seconds)
        if (prometheus := metrics.current()) is not None:
            prometheus.requests.labels(self.model).inc()
            prometheus.inferences.labels(self.model).inc(rows)
            prometheus.bytes_sent.labels(self.model).inc(sent)
            prometheus.bytes_received.labels(self.model).inc(received)
            prometheus.latency.labels(self.model).observe(seconds)

    def retry(self) -> None:
        with self._lock:
            self.retries += 1
        if (prometheus := metrics.current()) is not None:
            prometheus.retries.labels(self.model).inc()

    def failure(self) -> None:
        with self._lock:
            self.failures += 1
        if (prometheus := metrics.current()) is not None:
            prometheus.failures.labels(self.model).inc()

    def snapshot(self) -> ClientStats:
        with self._lock:
            latencies = np.array(self._latencies)
            p50, p99 = (np.percentile(latencies, [50, 99]) * 1e3) if len(latencies) else (None,
                                                                                         None)
            return ClientStats(self.calls, self.requests, self.inferences, self.failures,
                               self.retries, self.bytes_sent, self.bytes_received,
                               None if p50 is None else float(p50),
                               None if p99 is None else float(p99))


@dataclass(frozen=True)
class ServerStats:
    """Triton's own per-model counters (ModelStatistics), with mean times per request, like
    SONIC's verbose mode: where the server spends a request's time."""

    model: str
    version: str
    requests: int  # successful inference requests
    executions: int  # model executions (requests merged by the dynamic batcher count once)
    inferences: int
    queue_us: float
    compute_input_us: float
    compute_infer_us: float
    compute_output_us: float
    failures: int

    @property
    def mean_batch(self) -> float:
        return self.inferences / self.executions if self.executions else 0.0


def server_stats(response) -> list[ServerStats]:
    rows = []
    for entry in response.model_stats:
        stats = entry.inference_stats
        count = stats.success.count or 1

        def per_request(duration) -> float:
            return duration.ns / count / 1e3  # noqa: B023  (used at once)

        rows.append(ServerStats(
            entry.name, entry.version, stats.success.count, entry.execution_count,
            entry.inference_count, per_request(stats.queue), per_request(stats.compute_input),
            per_request(stats.compute_infer), per_request(stats.compute_output),
            stats.fail.count))
    return rows
