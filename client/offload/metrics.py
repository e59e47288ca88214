"""Optional Prometheus metrics of the client (needs `prometheus_client`, not part of the
thin install: `pip install 'offload[metrics]'`).

    import offload.metrics
    offload.metrics.enable()                    # the default registry
    prometheus_client.start_http_server(9100)   # expose them, e.g. from a long-lived job
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class _Metrics:
    requests: Any
    inferences: Any
    failures: Any
    retries: Any
    bytes_sent: Any
    bytes_received: Any
    latency: Any


_metrics: _Metrics | None = None


def enable(registry: Any = None) -> None:
    """Start recording every model's client statistics as Prometheus metrics (labelled by
    model). Safe to call twice."""
    global _metrics
    if _metrics is not None:
        return
    try:
        from prometheus_client import REGISTRY, Counter, Histogram
    except ImportError as error:
        raise ImportError("offload.metrics needs prometheus_client: "
                          "pip install 'offload[metrics]'") from error
    registry = registry or REGISTRY
    labels = ["model"]
    _metrics = _Metrics(
        Counter("offload_requests", "gRPC inference requests answered", labels,
                registry=registry),
        Counter("offload_inferences", "rows (batch entries) inferred", labels,
                registry=registry),
        Counter("offload_failures", "calls that raised", labels, registry=registry),
        Counter("offload_retries", "requests sent again", labels, registry=registry),
        Counter("offload_sent_bytes", "request bytes", labels, registry=registry),
        Counter("offload_received_bytes", "response bytes", labels, registry=registry),
        Histogram("offload_request_seconds", "request round trip", labels, registry=registry,
                  buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1,
                           2, 5, 10)),
    )


def current() -> _Metrics | None:
    return _metrics
